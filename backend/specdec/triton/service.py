"""One engine, many concurrent streams: an engine thread and a response thread.

Triton calls ``execute`` with new requests and expects it to return quickly (decoupled model).
:meth:`TargetService.submit` only queues the request. The *engine thread* owns the engine (which
is not thread-safe): it admits queued requests, checks cancellation of every active request each
round, runs ``engine.step()`` (continuous batching: requests join and leave between rounds) and
turns each round's output into a :class:`~.stream_text.Chunk`. The *response thread* sends the
chunks, so a slow send never stalls the engine (the vllm_backend pattern).

Cancellation arrives two ways: ``handle.is_cancelled()`` (a direct request to the target) and,
for requests inside the ensemble, a :class:`~.cancel.CancelInbox` that postprocessing writes to
(cancel.py explains why). Every request gets exactly one final message: with its last chunk, or with its error (invalid
input, cancellation, engine failure, shutdown). Whatever ends a request frees its KV blocks
(``engine.abort``). Triton objects stay behind the :class:`StreamHandle` protocol, so this file
runs (and is tested) without Triton.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from ..config import SamplingParams
from .cancel import CancelInbox, new_secret
from .stream_text import Chunk, ChunkTracker

log = logging.getLogger(__name__)


class ErrorKind:
    INVALID_ARG = "INVALID_ARG"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class RequestError:
    kind: str
    message: str


class StreamHandle(Protocol):
    """A request's way back to its client (a Triton response sender, or a list in tests)."""

    def is_cancelled(self) -> bool: ...

    def send(self, message: Chunk | RequestError, final: bool) -> None: ...


@dataclass(slots=True)
class _Submission:
    handle: StreamHandle
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    want_stats: bool


@dataclass(slots=True)
class _Active:
    handle: StreamHandle
    seq: object
    tracker: ChunkTracker
    want_stats: bool
    secret: str = ""


class TargetService:
    """Runs ``engine`` on a background thread; ``on_round(engine)`` is called after every loop turn."""

    def __init__(self, engine, on_round: Callable[[object], None] | None = None, idle_wait_s: float = 0.05,
                 device=None, cancel_inbox: CancelInbox | None = None):
        self.engine = engine
        self.cancel_inbox = cancel_inbox
        self.on_round = on_round
        self.idle_wait_s = idle_wait_s
        self.device = device
        self._inbox: queue.Queue[_Submission | None] = queue.Queue()
        self._outbox: queue.Queue[tuple | None] = queue.Queue()
        self._active: dict[int, _Active] = {}
        self._stop = threading.Event()
        self._engine_thread = threading.Thread(target=self._engine_loop, name="specdec-engine", daemon=True)
        self._response_thread = threading.Thread(target=self._response_loop, name="specdec-responses", daemon=True)
        self._engine_thread.start()
        self._response_thread.start()

    # --- called from Triton's execute thread ------------------------------------------------
    def submit(self, handle: StreamHandle, prompt_ids: list[int], params: SamplingParams, *, stream: bool = True,
               want_stats: bool = False) -> None:
        if self._stop.is_set():
            self._outbox.put((handle, RequestError(ErrorKind.UNAVAILABLE, "the target model is shutting down"), True))
            return
        self._inbox.put(_Submission(handle, prompt_ids, params, stream, want_stats))

    def reject(self, handle: StreamHandle, kind: str, message: str) -> None:
        """Answer a request that never reached the engine (its one final message)."""
        self._outbox.put((handle, RequestError(kind, message), True))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._engine_thread.join(timeout_s)
        self._outbox.put(None)
        self._response_thread.join(timeout_s)

    @property
    def num_active(self) -> int:
        return len(self._active)

    # --- the engine thread ------------------------------------------------------------------
    def _engine_loop(self) -> None:
        if self.device is not None and getattr(self.device, "type", None) == "cuda":
            import torch
            torch.cuda.set_device(self.device)     # the current CUDA device is per thread
        while not self._stop.is_set():
            self._admit(block=not self._active)
            if self._stop.is_set():
                break
            self._check_cancelled()
            if self.engine.has_unfinished():
                try:
                    outs = self.engine.step()
                except Exception as e:   # a failed round must not kill the server: fail its requests
                    log.exception("engine step failed; failing %d active requests", len(self._active))
                    self._fail_all(ErrorKind.INTERNAL, f"engine step failed: {type(e).__name__}: {e}")
                    outs = []
                for out in outs:
                    self._emit(out)
            if self.on_round is not None:
                try:
                    self.on_round(self.engine)
                except Exception:
                    log.exception("on_round callback failed")
        self._fail_all(ErrorKind.UNAVAILABLE, "the target model is shutting down")
        if self.on_round is not None:
            self.on_round(self.engine)

    def _admit(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=self.idle_wait_s) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            self._add(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _add(self, sub: _Submission) -> None:
        try:
            seq = self.engine.add_request(sub.prompt_ids, sub.params)
        except ValueError as e:
            self.reject(sub.handle, ErrorKind.INVALID_ARG, str(e))
            return
        self._active[seq.seq_id] = _Active(sub.handle, seq, ChunkTracker(sub.stream), sub.want_stats, new_secret())

    def _check_cancelled(self) -> None:
        reported = set()          # cancelled inside the ensemble, reported by postprocessing
        if self.cancel_inbox is not None:
            for sid, secret in self.cancel_inbox.poll():
                a = self._active.get(sid)
                if a is not None and a.secret == secret:
                    reported.add(sid)
        direct = set()            # a cancelled request to this model
        for sid, a in self._active.items():
            try:
                if sid not in reported and a.handle.is_cancelled():
                    direct.add(sid)
            except Exception:      # the client is gone; treat it as a cancellation
                direct.add(sid)
        for sid in reported | direct:
            a = self._active.pop(sid)
            self.engine.abort(a.seq, "cancelled")      # frees its KV blocks
            log.info("request %d cancelled after %d tokens", sid, len(a.seq.output_ids))
            if sid in direct:
                self._outbox.put((a.handle, RequestError(ErrorKind.CANCELLED, "request was cancelled"), True))
            else:
                # Inside the ensemble the final message is a data response: an error from this step
                # while postprocessing steps are in flight leaves the ensemble request in flight
                # forever in Triton 2.51 (its ensemble scheduler stops counting steps after an error).
                self._outbox.put((a.handle, Chunk([], 0, 0, True, finish_reason="cancelled"), True))

    def _emit(self, out) -> None:
        a = self._active.get(out.seq.seq_id)
        if a is None:
            return
        chunk = a.tracker.on_step(out)
        if chunk is None:
            return
        if out.finished:
            del self._active[out.seq.seq_id]
            chunk.finish_reason = out.seq.finish_reason
        if a.want_stats:
            chunk.stats = out.seq.stats.as_dict()
        if self.cancel_inbox is not None:
            chunk.cancel_key = self.cancel_inbox.key(out.seq.seq_id, a.secret)
        self._outbox.put((a.handle, chunk, out.finished))

    def _fail_all(self, kind: str, message: str) -> None:
        for sid, a in list(self._active.items()):
            try:
                self.engine.abort(a.seq, "error")
            except Exception:
                log.exception("abort of request %d failed", sid)
            self._outbox.put((a.handle, RequestError(kind, message), True))
        self._active.clear()

    # --- the response thread ----------------------------------------------------------------
    def _response_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            handle, message, final = item
            try:
                handle.send(message, final)
            except Exception:
                log.exception("sending a response failed")

