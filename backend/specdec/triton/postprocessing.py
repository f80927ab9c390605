"""The ``postprocessing`` Triton model: renders each chunk of the target's ids as a text delta.

Stateless: every chunk carries its own context ids (stream_text.py explains the protocol). The
counters of the chunk pass through unchanged. A chunk that arrives cancelled (the client
cancelled the ensemble) is reported back to the target through its ``cancel_key`` (cancel.py).
"""
from __future__ import annotations

from . import pbio
from .preprocessing import load_tokenizer_and_limit
from .settings import read_settings
from .cancel import notify_cancelled
from .stream_text import decode_chunk

PASS_THROUGH = ("num_output_tokens", "num_input_tokens", "acceptance_rate", "total_accepted_draft_tokens",
                "total_draft_tokens", "finish_reason")


class PostprocessingModel:
    def initialize(self, args):
        self.log = pbio.setup_logging(args["model_name"])
        settings = read_settings(args)
        self.tokenizer, _ = load_tokenizer_and_limit(settings.target, settings.max_model_len)

    def execute(self, requests):
        pb_utils = pbio.pb()
        responses = []
        for request in requests:
            get = pbio.getter(request)
            if request.is_cancelled():     # the client cancelled the ensemble: tell the target (cancel.py)
                key = get("cancel_key")
                if key is not None:
                    notify_cancelled(key.reshape(-1)[0].decode())
                # a normal (empty) response, not an error: see TargetService._check_cancelled
                responses.append(pb_utils.InferenceResponse(output_tensors=[pbio.string_tensor("text_output", "")]))
                continue
            try:
                ids = get("output_ids").reshape(-1).tolist()
                ctx = int(get("context_length").reshape(-1)[0])
                final = bool(get("is_final").reshape(-1)[0])
                m = get("max_chars")
                text = decode_chunk(self.tokenizer, ids, ctx, final, -1 if m is None else int(m.reshape(-1)[0]))
            except (ValueError, AttributeError) as e:
                responses.append(pbio.error_response("INVALID_ARG", f"postprocessing: {e}"))
                continue
            out = [pbio.string_tensor("text_output", text)]
            for name in PASS_THROUGH:
                t = pb_utils.get_input_tensor_by_name(request, name)
                if t is not None:
                    out.append(pb_utils.Tensor(name, t.as_numpy()))
            responses.append(pb_utils.InferenceResponse(output_tensors=out))
        return responses
