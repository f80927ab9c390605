"""The public request interface (Triton's LLM tensor names) and its validation.

Names and types follow the TensorRT-LLM / vLLM backends, so genai-perf, perf_analyzer, the
``generate`` endpoints and Triton's OpenAI frontend work unchanged. Everything that arrives is
turned into one :class:`GenerationRequest` here; every error is a ``ValueError`` whose message
names the field, the value and the allowed range (they travel to the client as INVALID_ARG).

Functions here see inputs through ``get(name) -> numpy array | None`` so they run without Triton.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ..config import SamplingParams

# name -> Triton type of the ensemble's inputs (``text_input`` is the only required one).
# `config.pbtxt` of the ensemble and of preprocessing declare exactly these (a test checks it).
INPUTS: dict[str, str] = {
    "text_input": "TYPE_STRING",
    "max_tokens": "TYPE_INT32",
    "stream": "TYPE_BOOL",
    "temperature": "TYPE_FP32",
    "top_p": "TYPE_FP32",
    "top_k": "TYPE_INT32",
    "random_seed": "TYPE_UINT64",            # TensorRT-LLM's name
    "seed": "TYPE_UINT64",                   # the OpenAI frontend's name
    "stop_words": "TYPE_STRING",
    "bad_words": "TYPE_STRING",
    "min_length": "TYPE_INT32",              # genai-perf --output-tokens-mean-deterministic
    "presence_penalty": "TYPE_FP32",         # the OpenAI frontend sends these two (0 = off)
    "frequency_penalty": "TYPE_FP32",
    "exclude_input_in_output": "TYPE_BOOL",  # genai-perf always sends true
    "num_draft_tokens": "TYPE_INT32",        # per-request K; 0 = plain autoregressive
    "apply_chat_template": "TYPE_BOOL",      # ours: wrap text_input in the tokenizer's chat template
    "return_perf_metrics": "TYPE_BOOL",
    "return_num_input_tokens": "TYPE_BOOL",
    "return_num_output_tokens": "TYPE_BOOL",
}
VARIABLE_INPUTS = ("stop_words", "bad_words")   # dims [-1]; all others are dims [1]
MAX_STOP_WORDS = 16                   # entries of stop_words (SamplingParams' limit)
MAX_STOP_CHARS = 256                  # characters of one stop string

# name -> Triton type of the ensemble's outputs (one response per round of the engine).
OUTPUTS: dict[str, str] = {
    "text_output": "TYPE_STRING",
    "num_output_tokens": "TYPE_UINT32",        # tokens committed in this chunk
    "num_input_tokens": "TYPE_UINT32",         # with return_num_input_tokens
    "acceptance_rate": "TYPE_FP32",            # with return_perf_metrics (running totals)
    "total_accepted_draft_tokens": "TYPE_INT32",
    "total_draft_tokens": "TYPE_INT32",
    "finish_reason": "TYPE_STRING",            # on the last chunk: "stop", "length"
}


@dataclass(slots=True)
class GenerationRequest:
    """A validated request as preprocessing hands it to the target (``sampling_parameters`` JSON)."""

    params: dict                                # SamplingParams keyword arguments
    stream: bool = True
    return_perf_metrics: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = True
    apply_chat_template: bool = False
    extra: dict = field(default_factory=dict)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.params)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "GenerationRequest":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"sampling_parameters is not valid JSON: {e}") from None
        if not isinstance(d, dict) or not isinstance(d.get("params"), dict):
            raise ValueError("sampling_parameters must be a JSON object with a 'params' object")
        known = {f for f in cls.__slots__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"sampling_parameters: unknown keys {sorted(unknown)}; allowed {sorted(known)}")
        req = cls(**d)
        try:
            req.sampling_params()        # raises ValueError naming the bad field
        except TypeError as e:           # an unknown SamplingParams keyword
            raise ValueError(f"sampling_parameters: {e}") from None
        return req


Getter = Callable[[str], "np.ndarray | None"]


def _utf8(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not valid UTF-8: byte {raw[e.start:e.start + 1]!r} at offset {e.start} "
                         f"({e.reason}); allowed: UTF-8 text") from None


def _scalar(get: Getter, name: str):
    """The single value of a [1] / [1, 1] input, as a Python scalar; None when absent."""
    arr = get(name)
    if arr is None:
        return None
    flat = np.asarray(arr).reshape(-1)
    if flat.size != 1:
        raise ValueError(f"{name} has {flat.size} values: allowed exactly 1 (send one request per prompt)")
    v = flat[0]
    if isinstance(v, bytes):
        return _utf8(name, v)
    return v.item() if hasattr(v, "item") else v


def _strings(get: Getter, name: str) -> list[str]:
    arr = get(name)
    if arr is None:
        return []
    flat = np.asarray(arr, dtype=object).reshape(-1)
    if flat.size > MAX_STOP_WORDS:
        raise ValueError(f"{name} has {flat.size} entries: allowed [0, {MAX_STOP_WORDS}]")
    out = []
    for i, v in enumerate(flat):
        s = _utf8(f"{name}[{i}]", v) if isinstance(v, bytes) else str(v)
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(f"{name}[{i}] has {len(s)} characters: allowed [1, {MAX_STOP_CHARS}]")
        if s:
            out.append(s)
    return out


# request parameters Triton's own protocol defines; they pass (with any reserved ``triton_*`` key)
TRITON_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output")


def check_parameters(parameters: dict) -> None:
    """Request parameters (HTTP ``generate``: any key that is not an input; gRPC ``parameters``).

    The model takes none of its own, so an unknown one is an error rather than silently ignored
    (a misspelled ``max_token`` would otherwise generate with the default). Triton's reserved
    keys (``triton_*``, e.g. ``triton_enable_empty_final_response``) and TRITON_PARAMETERS pass.
    """
    unknown = sorted(k for k in parameters if not k.startswith("triton_") and k not in TRITON_PARAMETERS)
    if unknown:
        k = unknown[0]
        raise ValueError(f"unknown parameter {k}={parameters[k]!r}: this model takes no request parameters; "
                         f"allowed inputs: {', '.join(INPUTS)}")


def parse_request(get: Getter, *, default_max_tokens: int, max_model_len: int,
                  default_chat: bool = False, max_input_bytes: int = 0) -> tuple[str, GenerationRequest]:
    """Read and validate the public inputs; return (prompt text, request).

    Prompt-length checks need the tokenizer and happen in preprocessing (see
    :func:`check_lengths`); everything else is checked here. ``max_input_bytes`` (> 0) caps
    text_input before it is decoded or tokenized.
    """
    raw = get("text_input")
    if raw is None:
        raise ValueError("text_input is required: allowed a non-empty UTF-8 string")
    flat = np.asarray(raw, dtype=object).reshape(-1)
    if flat.size == 1 and max_input_bytes and isinstance(flat[0], (bytes, str)):
        size = len(flat[0]) if isinstance(flat[0], bytes) else len(flat[0].encode("utf-8"))
        if size > max_input_bytes:             # before decoding or tokenizing it
            raise ValueError(f"text_input has {size} bytes: allowed [1, {max_input_bytes}] (max_input_bytes)")
    text = _scalar(get, "text_input")
    if not isinstance(text, str) or not text:
        raise ValueError(f"text_input={text!r} is empty: allowed a non-empty UTF-8 string")

    p: dict = {}
    max_tokens = _scalar(get, "max_tokens")
    p["max_tokens"] = default_max_tokens if max_tokens is None else int(max_tokens)
    for name in ("temperature", "top_p"):
        v = _scalar(get, name)
        if v is not None:
            p[name] = float(v)
    top_k = _scalar(get, "top_k")
    if top_k is not None:
        p["top_k"] = int(top_k)
    seed = _scalar(get, "seed")
    random_seed = _scalar(get, "random_seed")
    if seed is not None and random_seed is not None and int(seed) != int(random_seed):
        raise ValueError(f"seed={seed} and random_seed={random_seed} differ: allowed one of them, or both equal")
    if seed is not None or random_seed is not None:
        p["seed"] = int(seed if seed is not None else random_seed)
    stops = _strings(get, "stop_words")
    if stops:
        p["stop"] = stops
    bad = _strings(get, "bad_words")
    if bad:
        raise ValueError(f"bad_words={bad!r} is not supported: allowed []")
    k = _scalar(get, "num_draft_tokens")
    if k is not None:
        p["num_draft_tokens"] = int(k)
    for name in ("presence_penalty", "frequency_penalty"):
        v = _scalar(get, name)
        if v is not None and (math.isnan(v) or v != 0.0):
            raise ValueError(f"{name}={v!r} is not supported: allowed [0.0, 0.0]")
    if p["max_tokens"] < 1:
        raise ValueError(f"max_tokens={p['max_tokens']} is out of range: allowed [1, {max_model_len - 1}] "
                         f"(max_model_len={max_model_len} minus the prompt's tokens)")
    min_length = _scalar(get, "min_length")
    if min_length is not None and min_length != 0:
        if min_length < p["max_tokens"]:
            raise ValueError(f"min_length={min_length} is not supported: allowed 0 or >= max_tokens "
                             f"({p['max_tokens']}), which generates exactly max_tokens tokens")
        p["ignore_eos"] = True
    if _scalar(get, "exclude_input_in_output") is False:
        raise ValueError("exclude_input_in_output=False is not supported: allowed [True] "
                         "(responses carry only the generated text)")
    SamplingParams(**p)    # raises ValueError naming field, value and allowed range (K: [0, MAX_K])

    def flag(name: str, default: bool) -> bool:
        v = _scalar(get, name)
        return default if v is None else bool(v)

    req = GenerationRequest(
        params=p,
        stream=flag("stream", True),
        return_perf_metrics=flag("return_perf_metrics", False),
        return_num_input_tokens=flag("return_num_input_tokens", False),
        return_num_output_tokens=flag("return_num_output_tokens", True),
        apply_chat_template=flag("apply_chat_template", default_chat),
    )
    return text, req


def check_lengths(num_prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """A prompt must leave room for at least one token, and max_tokens must fit after it."""
    if num_prompt_tokens < 1:
        raise ValueError("text_input encodes to 0 tokens: allowed [1, "
                         f"{max_model_len - 1}] tokens")
    if num_prompt_tokens >= max_model_len:
        raise ValueError(f"text_input has {num_prompt_tokens} tokens: allowed [1, {max_model_len - 1}] "
                         f"(max_model_len={max_model_len})")
    room = max_model_len - num_prompt_tokens
    if max_tokens > room:
        raise ValueError(f"max_tokens={max_tokens} is out of range: allowed [1, {room}] "
                         f"(max_model_len={max_model_len} minus {num_prompt_tokens} prompt tokens)")
