"""The ``preprocessing`` Triton model: validates a request, applies the chat template, tokenizes.

Outputs ``input_ids`` INT32 [-1] and ``sampling_parameters`` STRING [1] (validated JSON) for the
target. A bad request gets one INVALID_ARG error that names the field, its value and the allowed
range; the ensemble passes it to the client and no engine work happens (docs/bad-input.md lists
every case, including those Triton rejects before this model runs).
"""
from __future__ import annotations

import json

import numpy as np

from ..models.loader import encode_prompt
from . import pbio
from .schema import check_lengths, check_parameters, parse_request
from .settings import read_settings


def load_tokenizer_and_limit(target: str, max_model_len: int = 0):
    """The target's tokenizer and context limit, computed as the engine computes them."""
    from ..models.loader import context_limit, load_hf_config, load_tokenizer
    from ..models.registry import resolve
    folder = resolve(target)
    cfg = load_hf_config(folder)
    limit = context_limit(cfg)
    return load_tokenizer(folder), min(max_model_len or limit, limit)


def input_byte_cap(tokenizer, max_model_len: int) -> int:
    """Bytes of text_input that can still fit the context: max_model_len x the longest token's UTF-8
    bytes (an upper bound; byte-level tokens count their stand-in characters, which is larger)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    longest = max((len(t.encode("utf-8")) for t in tokens if isinstance(t, str)), default=1)
    return max_model_len * max(longest, 1)


class PreprocessingModel:
    def initialize(self, args):
        self.log = pbio.setup_logging(args["model_name"])
        self.settings = read_settings(args)
        self.tokenizer, self.max_model_len = load_tokenizer_and_limit(self.settings.target, self.settings.max_model_len)
        self.max_input_bytes = self.settings.max_input_bytes or input_byte_cap(self.tokenizer, self.max_model_len)
        self.log.info("tokenizer of %s loaded; max_model_len=%d, max_input_bytes=%d", self.settings.target,
                      self.max_model_len, self.max_input_bytes)

    def execute(self, requests):
        pb_utils = pbio.pb()
        responses = []
        for request in requests:
            try:
                check_parameters(json.loads(request.parameters() or "{}"))
                text, req = parse_request(pbio.getter(request), default_max_tokens=self.settings.default_max_tokens,
                                          max_model_len=self.max_model_len, default_chat=self.settings.apply_chat_template,
                                          max_input_bytes=self.max_input_bytes)
                ids = encode_prompt(self.tokenizer, text, req.apply_chat_template)
                check_lengths(len(ids), req.params["max_tokens"], self.max_model_len)
            except ValueError as e:
                responses.append(pbio.error_response("INVALID_ARG", str(e)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pbio.tensor("input_ids", ids, np.int32),
                pbio.string_tensor("sampling_parameters", req.to_json()),
            ]))
        return responses
