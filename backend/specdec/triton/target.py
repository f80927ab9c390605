"""The ``target`` Triton model: hosts the engine (scheduler + target model) on its instance's device.

Inputs (from preprocessing): ``input_ids`` INT32 [-1], ``sampling_parameters`` STRING [1] (JSON of
:class:`~.schema.GenerationRequest`). Outputs, one response per engine round (see stream_text.py),
under the ensemble's own names: ``text_output`` (the engine's text delta of the round),
``num_output_tokens`` UINT32, and on request ``num_input_tokens``, ``acceptance_rate``,
``total_accepted_draft_tokens``, ``total_draft_tokens``; ``finish_reason`` on the last one;
``cancel_key`` (cancel.py) on every one, which postprocessing keeps.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import numpy as np

from . import pbio
from .cancel import CancelInbox
from .metrics import TritonMetrics
from .schema import GenerationRequest
from .service import ErrorKind, RequestError, TargetService
from .settings import instance_device, read_settings
from .stream_text import Chunk

log = logging.getLogger(__name__)


def build_engine(settings, device, log_=log):
    """The engine for these settings; if the draft cannot be set up, an AR engine (and a warning)."""
    from ..engine.engine import LLMEngine
    cfg = settings.engine_config(str(device))
    t0 = time.perf_counter()
    try:
        engine = LLMEngine(cfg)
    except Exception as e:
        if cfg.mode == "ar":
            raise
        log_.warning("draft %r (mode %s) could not be set up: %s: %s -- serving in AR mode",
                     cfg.spec.draft, cfg.mode, type(e).__name__, e)
        cfg = dataclasses.replace(cfg, mode="ar", spec=dataclasses.replace(cfg.spec, draft=None))
        engine = LLMEngine(cfg)
    desc = "ar" if cfg.mode == "ar" else f"{cfg.mode}, draft={cfg.spec.draft}, K={cfg.spec.k}"
    log_.info("engine ready in %.1f s: target=%s on %s (%s, %s), max_model_len=%d, KV blocks=%d",
              time.perf_counter() - t0, cfg.target, device, cfg.dtype, desc, engine.max_model_len,
              engine.runner.num_free_blocks)
    return engine


class _Handle:
    """A Triton request as the service sees it (StreamHandle): cancellation and sending.

    ``is_cancelled`` (the service's cancel thread) and the final ``send`` (its response thread)
    exclude each other: the server frees the request's response factory with the final response,
    and an ``is_cancelled()`` after that would read freed memory in the server process."""

    __slots__ = ("request", "sender", "num_input_tokens", "req", "request_id", "_lock", "_closed")

    def __init__(self, request, num_input_tokens: int, req: GenerationRequest | None):
        self.request = request
        self.request_id = request.request_id()      # the client's id (the ensemble passes it on)
        self.sender = request.get_response_sender()
        self.num_input_tokens = num_input_tokens
        self.req = req
        self._lock = threading.Lock()
        self._closed = False                        # the final response is (being) sent

    def is_cancelled(self) -> bool:
        with self._lock:
            return not self._closed and self.request.is_cancelled()

    def send(self, message, final: bool) -> None:
        pb_utils = pbio.pb()
        if final:
            with self._lock:                        # waits for an is_cancelled() in flight
                self._closed = True
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        if isinstance(message, RequestError):
            self.sender.send(pbio.error_response(message.kind, message.message), flags=flags)
            return
        self.sender.send(pb_utils.InferenceResponse(output_tensors=self._tensors(message)), flags=flags)

    def _tensors(self, c: Chunk) -> list:
        t = [pbio.string_tensor("text_output", c.text)]
        req = self.req
        if req is None or req.return_num_output_tokens:
            t.append(pbio.tensor("num_output_tokens", [c.num_new_tokens], np.uint32))
        if req is not None and req.return_num_input_tokens:
            t.append(pbio.tensor("num_input_tokens", [self.num_input_tokens], np.uint32))
        if c.stats is not None:
            t.append(pbio.tensor("acceptance_rate", [c.stats["acceptance_rate"]], np.float32))
            t.append(pbio.tensor("total_accepted_draft_tokens", [c.stats["accepted"]], np.int32))
            t.append(pbio.tensor("total_draft_tokens", [c.stats["drafted"]], np.int32))
        if c.finish_reason is not None:
            t.append(pbio.string_tensor("finish_reason", c.finish_reason))
        if c.cancel_key is not None:
            t.append(pbio.string_tensor("cancel_key", c.cancel_key))
        return t


class TargetModel:
    """TritonPythonModel of the ``target`` model (model_repository/target/1/model.py imports it)."""

    def initialize(self, args):
        pb_utils = pbio.pb()
        name = args["model_name"]
        self.log = pbio.setup_logging(name)
        cfg = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(cfg):
            raise pb_utils.TritonModelException(f"{name}: the target model must be decoupled")
        settings = read_settings(args)
        device = instance_device(args)
        if settings.target_gpus:                 # tensor parallel (KIND_MODEL): rank 0 on the first listed GPU
            import torch
            device = torch.device("cuda", settings.target_gpus[0])
            self.log.info("instance %s: target split over GPUs %s (tensor parallel)", args["model_instance_name"],
                          settings.target_gpus)
        if device.type == "cuda":
            import torch
            torch.cuda.set_device(device)
            self.log.info("instance %s on GPU %d (%s)", args["model_instance_name"], device.index,
                          torch.cuda.get_device_name(device))
        else:
            import torch
            if settings.cpu_threads:
                torch.set_num_threads(settings.cpu_threads)
            self.log.info("instance %s on CPU (%d torch threads)", args["model_instance_name"], torch.get_num_threads())
        self.engine = build_engine(settings, device, self.log)
        if settings.capture_at_start:
            from ..engine.warmup import warm_up
            warm_up(self.engine)             # CUDA: graphs captured before ready, not in the first users' latency
        self.metrics = TritonMetrics(pb_utils, name, str(device))
        max_queued = None if settings.max_queued_requests < 0 else settings.max_queued_requests
        self.service = TargetService(self.engine, on_round=lambda e: self.metrics.on_round(e, getattr(self, "service", None)),
                                     device=device, cancel_inbox=CancelInbox(), max_queued=max_queued)
        self.log.info("accepting up to %s requests at once (engine batch %d + max_queued_requests %s)",
                      self.service.capacity or "unlimited", self.engine.cfg.max_batch_size, max_queued)

    def execute(self, requests):
        for request in requests:
            handle = _Handle(request, 0, None)
            try:
                get = pbio.getter(request)
                ids = get("input_ids").reshape(-1).tolist()
                sp = get("sampling_parameters")
                text = "{}" if sp is None else sp.reshape(-1)[0]
                req = GenerationRequest.from_json(text.decode() if isinstance(text, bytes) else text)
                params = req.sampling_params()
            except ValueError as e:
                self.service.reject(handle, ErrorKind.INVALID_ARG, str(e))
                continue
            except Exception as e:          # never leave a request without its final response
                self.log.exception("reading a request failed")
                self.service.reject(handle, ErrorKind.INTERNAL, f"{type(e).__name__}: {e}")
                continue
            handle.req, handle.num_input_tokens = req, len(ids)
            self.service.submit(handle, ids, params, stream=req.stream, want_stats=req.return_perf_metrics)
        return None

    def finalize(self):
        self.log.info("shutting down: %d active requests get a final UNAVAILABLE error", self.service.num_active)
        self.service.shutdown()
        self.metrics.close()
        self.engine.close()            # EXIT to a draft worker, if any
