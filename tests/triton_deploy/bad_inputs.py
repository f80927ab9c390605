"""The bad requests of docs/bad-input.md, as data: each kind, how it is sent, what the client must get.

One list feeds the server test (test_server_reliability.py sends every one) and the check that the
table in docs/bad-input.md names exactly these kinds. ``ours`` marks requests that reach our
preprocessing/target code: their error is INVALID_ARG (HTTP 400) and names the field, the value
and the allowed range. The others are answered by Triton 2.51 itself before a model runs; the
test pins down what the client gets there. None of them may kill a stub process or hold up the
valid requests served beside them.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Case:
    kind: str
    transport: str                 # "grpc" (a gRPC stream), "http" (POST generate_stream) or "http_infer" (POST infer)
    payload: object                # grpc: {name: numpy array} (text_input defaults to "hi" for the ensemble);
                                   # http: body (str/bytes)
    needles: tuple[str, ...]       # substrings of the error message
    ours: bool = True              # answered by specdec (INVALID_ARG naming field, value, range)
    status: int = 400              # HTTP status (http cases)
    parameters: dict = field(default_factory=dict)   # grpc request parameters
    model: str = "ensemble"        # the model the request goes to (the others are reachable too)
    raw: dict = field(default_factory=dict)          # grpc: name -> the bytes sent instead of the array's encoding
    headers: dict = field(default_factory=dict)      # http headers


def _s(*v):
    return np.array([[x.encode() if isinstance(x, str) else x for x in v]], dtype=object)


def _i32(v):
    return np.array([[v]], np.int32)


def _f32(v):
    return np.array([[v]], np.float32)


def _binary_infer(name: str, blob: bytes) -> tuple[bytes, dict]:
    """An HTTP infer body with one BYTES input sent as raw binary data (Triton's binary extension)."""
    header = json.dumps({"inputs": [{"name": name, "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


def cases(byte_cap: int, long_prompt: str) -> list[Case]:
    """``byte_cap``: the server's max_input_bytes; ``long_prompt``: text under the cap but over the context."""
    lying_body, lying_headers = _binary_infer("text_input", struct.pack("<I", 1000) + b"hi")   # 1000 bytes? 2 follow
    return [
        Case("missing_text_input", "grpc", {"text_input": None, "max_tokens": _i32(4)}, ("text_input is required", "allowed")),
        Case("empty_text_input", "grpc", {"text_input": _s("")}, ("text_input=''", "allowed a non-empty")),
        Case("oversized_text_input", "http", '{"text_input": "%s", "max_tokens": 4}' % ("a" * (byte_cap + 1)),
             (f"text_input has {byte_cap + 1} bytes: allowed [1, {byte_cap}]",)),
        Case("prompt_longer_than_context", "grpc", {"text_input": _s(long_prompt)}, ("text_input has", "tokens: allowed [1, 511]")),
        Case("invalid_utf8_text_input", "grpc", {"text_input": _s(b"ok \xff\xfe")},
             ("text_input is not valid UTF-8: byte b'\\xff' at offset 3", "allowed: UTF-8 text")),
        Case("invalid_utf8_stop_words", "grpc", {"stop_words": _s("fine", b"\xc3")},
             ("stop_words[1] is not valid UTF-8", "allowed: UTF-8 text")),
        Case("too_many_stop_words", "grpc", {"stop_words": _s(*[f"w{i}" for i in range(17)])},
             ("stop_words has 17 entries: allowed [0, 16]",)),
        Case("stop_word_too_long", "grpc", {"stop_words": _s("x" * 300)}, ("stop_words[0] has 300 characters: allowed [1, 256]",)),
        Case("max_tokens_zero", "http", '{"text_input": "hi", "max_tokens": 0}', ("max_tokens=0 is out of range: allowed [1, 511]",)),
        Case("max_tokens_negative", "grpc", {"max_tokens": _i32(-3)}, ("max_tokens=-3 is out of range: allowed [1,",)),
        Case("max_tokens_huge", "grpc", {"max_tokens": _i32(100000)}, ("max_tokens=100000 is out of range: allowed [1, 510]",)),
        Case("max_tokens_over_int32_http", "http", '{"text_input": "hi", "max_tokens": 99999999999}',
             ("max_tokens=1215752191 is out of range: allowed [1, 510]",)),
        Case("temperature_negative", "http", '{"text_input": "hi", "temperature": -0.5}',
             ("temperature=-0.5 is out of range: allowed [0.0, 100.0]",)),
        Case("temperature_nan", "grpc", {"temperature": _f32(math.nan)}, ("temperature=nan is out of range: allowed [0.0, 100.0]",)),
        Case("temperature_inf", "http", '{"text_input": "hi", "temperature": 1e39}',
             ("temperature=inf is out of range: allowed [0.0, 100.0]",)),
        Case("top_p_zero", "grpc", {"top_p": _f32(0.0)}, ("top_p=0.0 is out of range: allowed (0.0, 1.0]",)),
        Case("top_p_above_one", "http", '{"text_input": "hi", "top_p": 1.5}', ("top_p=1.5 is out of range: allowed (0.0, 1.0]",)),
        Case("top_p_nan", "grpc", {"top_p": _f32(math.nan)}, ("top_p=nan is out of range: allowed (0.0, 1.0]",)),
        Case("top_k_negative", "grpc", {"top_k": _i32(-1)}, ("top_k=-1 is out of range: allowed [0, inf]",)),
        Case("num_draft_tokens_above_max", "grpc", {"num_draft_tokens": _i32(17)},
             ("num_draft_tokens=17 is out of range: allowed [0, 16]",)),
        Case("num_draft_tokens_negative", "http", '{"text_input": "hi", "num_draft_tokens": -1}',
             ("num_draft_tokens=-1 is out of range: allowed [0, 16]",)),
        Case("seed_conflict", "grpc", {"seed": np.array([[1]], np.uint64), "random_seed": np.array([[2]], np.uint64)},
             ("seed=1 and random_seed=2 differ",)),
        Case("presence_penalty_nonzero", "grpc", {"presence_penalty": _f32(0.5)},
             ("presence_penalty=0.5 is not supported: allowed [0.0, 0.0]",)),
        Case("bad_words_nonempty", "grpc", {"bad_words": _s("x")}, ("bad_words=['x'] is not supported: allowed []",)),
        Case("min_length_below_max_tokens", "grpc", {"max_tokens": _i32(8), "min_length": _i32(3)},
             ("min_length=3 is not supported: allowed 0 or >= max_tokens (8)",)),
        Case("exclude_input_in_output_false", "grpc", {"exclude_input_in_output": np.array([[False]])},
             ("exclude_input_in_output=False is not supported: allowed [True]",)),
        Case("chat_template_missing", "grpc", {"apply_chat_template": np.array([[True]])},
             ("apply_chat_template=True is not supported", "allowed [False]")),
        Case("unknown_parameter_http", "http", '{"text_input": "hi", "max_token": 5}',
             ("unknown parameter max_token=5", "allowed inputs: text_input, max_tokens")),
        Case("unknown_parameter_grpc", "grpc", {}, ("unknown parameter temprature=0.5", "allowed inputs:"),
             parameters={"temprature": 0.5}),
        # --- answered by Triton before our code runs -------------------------------------------
        Case("unknown_input_tensor", "grpc", {"foo": _i32(1)}, ("unexpected inference input 'foo' for model 'ensemble'",),
             ours=False),
        Case("wrong_dtype", "grpc", {"max_tokens": _f32(4.0)},
             ("inference input 'max_tokens' data-type is 'FP32', but model 'ensemble' expects 'INT32'",), ours=False),
        Case("wrong_shape", "grpc", {"text_input": _s("a", "b")},
             ("unexpected shape for input 'text_input' for model 'ensemble'. Expected [-1,1], got [1,2]",), ours=False),
        Case("batch_of_two", "grpc", {"text_input": np.array([[b"a"], [b"b"]], dtype=object)},
             ("inference request batch-size must be <= 1 for 'ensemble'",), ours=False),
        Case("wrong_json_type_http", "http", '{"text_input": "hi", "max_tokens": "many"}',
             ("Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer",), ours=False, status=500),
        Case("text_input_not_a_string_http", "http", '{"text_input": 5}',
             ("Unable to parse JSON bytes array: attempt to access JSON non-string as string",), ours=False, status=500),
        Case("malformed_json_http", "http", '{"text_input": "hi",',
             ("failed to parse the request JSON buffer: Missing a name for object member.",), ours=False, status=500),
        Case("json_not_an_object_http", "http", '["hi"]', ("attempt to get members for non-object",), ours=False, status=500),
        # --- malformed tensors, empty requests, more of the above over the other transport -------
        Case("empty_batch", "grpc", {"text_input": np.zeros((0, 1), dtype=object)},
             ("expected 1 string elements for inference input 'text_input' for model 'ensemble', got 0",), ours=False),
        Case("empty_batch_http", "http", '{"text_input": []}',
             ("expected 1 string elements for inference input 'text_input' for model 'ensemble', got 0",), ours=False),
        Case("no_input_tensors", "grpc", {"text_input": None}, ("out of bounds index 0: request has 0 inputs",), ours=False),
        Case("empty_json_object_http", "http", "{}", ("out of bounds index 0: request has 0 inputs",), ours=False),
        Case("text_input_wrong_dtype", "grpc", {"text_input": _i32(5)},
             ("inference input 'text_input' data-type is 'INT32', but model 'ensemble' expects 'BYTES'",), ours=False),
        Case("max_tokens_wrong_shape", "grpc", {"max_tokens": np.array([[4, 5]], np.int32)},
             ("unexpected shape for input 'max_tokens' for model 'ensemble'. Expected [-1,1], got [1,2]",), ours=False),
        Case("input_shape_mismatch_http", "http", '{"text_input": "hi", "max_tokens": [1, 2]}',
             ("input 'text_input' batch size does not match other inputs for 'ensemble'",), ours=False),
        Case("unknown_tensors_beside_a_valid_request", "grpc", {"max_tokens": _i32(4), "foo": _i32(1), "bar": _s(b"\xff")},
             ("unexpected inference input 'foo' for model 'ensemble'",), ours=False),
        Case("bytes_length_prefix_too_long", "grpc", {"text_input": _s("hi")}, ("incomplete string data for inference input "
             "'text_input', expecting string of length 1000 but only 2 bytes available",), ours=False,
             raw={"text_input": struct.pack("<I", 1000) + b"hi"}),
        Case("bytes_length_prefix_truncated", "grpc", {"text_input": _s("hi")}, ("incomplete string length indicator for "
             "inference input 'text_input' for model 'ensemble', expecting 4 bytes but only 2 bytes available",),
             ours=False, raw={"text_input": b"\x05\x00"}),
        Case("bytes_more_elements_than_shape", "grpc", {"text_input": _s("hi")}, ("unexpected number of string elements 2 "
             "for inference input 'text_input' for model 'ensemble', expecting 1",), ours=False,
             raw={"text_input": struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0)}),
        Case("numeric_byte_size_mismatch", "grpc", {"max_tokens": _i32(4)},
             ("input byte size mismatch for input 'max_tokens' for model 'ensemble'. Expected 4, got 2",), ours=False,
             raw={"max_tokens": b"\x04\x00"}),
        Case("invalid_utf8_text_input_http", "http", b'{"text_input": "ok \xff\xfe", "max_tokens": 4}',
             ("text_input is not valid UTF-8: byte b'\\xff' at offset 3", "allowed: UTF-8 text")),
        Case("invalid_surrogate_http", "http", '{"text_input": "\\ud800", "max_tokens": 4}',
             ("failed to parse the request JSON buffer: The surrogate pair in string is invalid.",), ours=False, status=500),
        Case("empty_stop_word_element_http", "http", '{"text_input": "hi", "stop_words": [[]]}',
             ("expected 1 string elements for inference input 'stop_words' for model 'ensemble', got 0",), ours=False),
        Case("nested_object_parameter_http", "http", '{"text_input": "hi", "x": {"a": [1, {"b": null}]}}',
             ("parameter 'x' has invalid type. It should be either 'int', 'bool', or 'string'.",), ours=False),
        Case("empty_body_http", "http", "", ("failed to parse the request JSON buffer: The document is empty.",),
             ours=False, status=500),
        # --- straight to the ensemble's steps (they are models of the server too) -------------------
        Case("preprocessing_bytes_length_prefix_too_long", "http_infer", lying_body, ("incomplete string data for inference "
             "input 'text_input', expecting string of length 1000 but only 2 bytes available",), ours=False,
             model="preprocessing", headers=lying_headers),
        Case("target_token_id_out_of_range", "grpc", {"input_ids": np.array([[10 ** 9, 2]], np.int32),
                                                       "sampling_parameters": _s('{"params": {"max_tokens": 3}}')},
             ("prompt token id 1000000000 is out of range: allowed [0,",), model="target"),
        Case("postprocessing_missing_inputs", "http_infer", json.dumps({"inputs": []}),
             ("missing required input(s) ['text_output']",), ours=False, model="postprocessing"),
    ]
