"""Small helpers around ``triton_python_backend_utils`` shared by the model.py files.

``triton_python_backend_utils`` exists only inside a Triton Python-backend stub, so it is imported
lazily; the rest of specdec.triton imports without it.
"""
from __future__ import annotations

import logging

import numpy as np


def pb():
    import triton_python_backend_utils as pb_utils
    return pb_utils


def getter(request):
    """``get(name) -> numpy array | None`` for one request (what schema.parse_request reads).

    The inputs are read once: ``pb_utils.get_input_tensor_by_name`` builds the request's whole input
    list again on every call, and parse_request asks for each of the ~19 names."""
    arrays = {t.name(): t.as_numpy() for t in request.inputs()}
    return arrays.get


def tensor(name: str, values, dtype) -> object:
    """A [1, n] output tensor (every model here has max_batch_size 1, so outputs carry a batch dim)."""
    arr = np.asarray(values, dtype=dtype).reshape(1, -1)
    return pb().Tensor(name, arr)


def string_tensor(name: str, text: str):
    return pb().Tensor(name, np.array([[text.encode("utf-8")]], dtype=object))


def error_response(kind: str, message: str):
    """InferenceResponse carrying ``TritonError(message, code)``; kind is a TritonError code name."""
    pb_utils = pb()
    code = getattr(pb_utils.TritonError, kind, pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonLogHandler(logging.Handler):
    """Route the engine's ``logging`` records into Triton's log (``pb_utils.Logger``)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = f"[{self.prefix}] {record.name}: {self.format(record)}"
            logger = pb().Logger
            if record.levelno >= logging.ERROR:
                logger.log_error(msg)
            elif record.levelno >= logging.WARNING:
                logger.log_warn(msg)
            else:
                logger.log_info(msg)
        except Exception:     # logging must never break serving
            pass


def setup_logging(prefix: str, level: int = logging.INFO) -> logging.Logger:
    root = logging.getLogger("specdec")
    if not any(isinstance(h, TritonLogHandler) for h in root.handlers):
        root.addHandler(TritonLogHandler(prefix))
    root.setLevel(level)
    root.propagate = False
    return logging.getLogger(f"specdec.triton.{prefix}")
