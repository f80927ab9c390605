"""One engine, many concurrent streams: an engine thread and a response thread.

Triton calls ``execute`` with new requests and expects it to return quickly (decoupled model).
:meth:`TargetService.submit` only queues the request. The *engine thread* owns the engine (which
is not thread-safe): it admits queued requests, aborts the requests found cancelled, runs
``engine.step()`` (continuous batching: requests join and leave between rounds) and turns each
round's output into a :class:`~.stream_text.Chunk`. The *response thread* sends the chunks, so a
slow send never stalls the engine (the vllm_backend pattern).

Cancellation arrives two ways: ``handle.is_cancelled()`` (a direct request to the target) and,
for requests inside the ensemble, a :class:`~.cancel.CancelInbox` that postprocessing writes to
(cancel.py explains why). The *cancel thread* watches both and hands what it finds to the engine
thread through a queue, so no round waits on them: in Triton each ``is_cancelled()`` is a round
trip to the server process (0.1-0.4 ms on a 2-core CPU), once per active request. Inbox messages
are forwarded at once; the handles are asked every ``cancel_poll_s``, so a direct cancellation
is noticed within that time and aborted before the next round.

Every request gets exactly one final message: with its last chunk, or with its error (invalid
input, cancellation, engine failure, overload, shutdown). Whatever ends a request frees its KV
blocks (``engine.abort``). Triton objects stay behind the :class:`StreamHandle` protocol, so this
file runs (and is tested) without Triton.

Overload: the service holds at most ``engine batch + max_queued`` requests (queued here, waiting
in the engine or running). Past that, :meth:`submit` answers UNAVAILABLE at once, from the
caller's thread, so nothing piles up behind a full engine and memory stays bounded.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
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
    cancel_key: str | None = None  # where postprocessing reports its cancellation (cancel.py); None without an inbox
    rounds: int = 0               # engine outputs (= responses) so far


class TargetService:
    """Runs ``engine`` on a background thread; ``on_round(engine)`` is called after every loop turn."""

    def __init__(self, engine, on_round: Callable[[object], None] | None = None, idle_wait_s: float = 0.05,
                 device=None, cancel_inbox: CancelInbox | None = None, max_queued: int | None = None,
                 cancel_poll_s: float = 0.02):
        self.engine = engine
        self.cancel_inbox = cancel_inbox
        self.on_round = on_round
        self.idle_wait_s = idle_wait_s
        self.cancel_poll_s = cancel_poll_s   # how often the cancel thread asks each handle is_cancelled()
        self.device = device
        # requests held at once (None = no cap): the engine's batch plus max_queued waiting
        self.capacity = None if max_queued is None else engine.cfg.max_batch_size + max_queued
        self._held = 0                       # submitted and not yet given their final (under _lock)
        self._lock = threading.Lock()
        self.rejected = 0                    # refused with UNAVAILABLE (full)
        self.cancelled = 0                   # engine thread only, like the counters below
        self.tokens_generated = 0
        self.draft_attaches = 0              # times a drafter started speculating (a worker (re)joined)
        self._drafter = None
        self._inbox: queue.Queue[_Submission | None] = queue.Queue()
        # SimpleQueue (in C), not queue.Queue (a Python Condition): waking the response thread costs the
        # engine thread fewer GIL hand-offs (measured without Triton: 0.8-1.0 a round instead of 1.5-1.7)
        self._outbox: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._active: dict[int, _Active] = {}
        # (seq_id, secret) from the cancel inbox, (seq_id, None) from handle.is_cancelled()
        self._cancels: queue.SimpleQueue[tuple[int, str | None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._engine_thread = threading.Thread(target=self._engine_loop, name="specdec-engine", daemon=True)
        self._response_thread = threading.Thread(target=self._response_loop, name="specdec-responses", daemon=True)
        self._cancel_thread = threading.Thread(target=self._cancel_loop, name="specdec-cancel", daemon=True)
        self._engine_thread.start()
        self._response_thread.start()
        self._cancel_thread.start()

    # --- called from Triton's execute thread ------------------------------------------------
    def submit(self, handle: StreamHandle, prompt_ids: list[int], params: SamplingParams, *, stream: bool = True,
               want_stats: bool = False) -> bool:
        """Queue a request for the engine thread; False if it was refused (full or shutting down),
        in which case its one final message, an UNAVAILABLE error, has been sent already."""
        if self._stop.is_set():
            self._outbox.put((handle, RequestError(ErrorKind.UNAVAILABLE, "the target model is shutting down"), True))
            return False
        with self._lock:
            full = self.capacity is not None and self._held >= self.capacity
            if full:
                self.rejected += 1
            else:
                self._held += 1
        if full:
            # The code travels as TritonError UNAVAILABLE, but Triton 2.51's HTTP generate endpoints
            # answer 400 for every model error and gRPC streams carry no code: the message says it.
            msg = (f"UNAVAILABLE: server overloaded: {self.capacity} requests in flight, allowed at most {self.capacity} "
                   f"(engine batch {self.engine.cfg.max_batch_size} + max_queued_requests "
                   f"{self.capacity - self.engine.cfg.max_batch_size}); retry later")
            try:      # at once, from this thread: the response thread may have a backlog
                handle.send(RequestError(ErrorKind.UNAVAILABLE, msg), True)
            except Exception:
                log.exception("sending an UNAVAILABLE response failed")
            return False
        self._inbox.put(_Submission(handle, prompt_ids, params, stream, want_stats))
        return True

    def reject(self, handle: StreamHandle, kind: str, message: str) -> None:
        """Answer a request that never reached the engine (its one final message)."""
        self._outbox.put((handle, RequestError(kind, message), True))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._cancel_thread.join(timeout_s)
        self._engine_thread.join(timeout_s)
        self._drain_inbox()             # submitted while the engine thread was stopping
        self._outbox.put(None)
        self._response_thread.join(timeout_s)

    @property
    def num_active(self) -> int:
        return len(self._active)

    def counts(self) -> dict[str, float]:
        """Request-level metric values (metrics.snapshot reads them from the engine thread)."""
        return {"specdec_active_requests": self._held, "specdec_max_active_requests": self.capacity or 0,
                "specdec_generated_tokens_total": self.tokens_generated,
                "specdec_requests_cancelled_total": self.cancelled,
                "specdec_draft_attaches_total": self.draft_attaches,
                "specdec_requests_rejected_total": self.rejected}

    def _final(self, handle: StreamHandle, message) -> None:
        """Queue a submitted request's one final message and release its place."""
        self._outbox.put((handle, message, True))
        with self._lock:
            self._held -= 1

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
            self._watch_drafter()
            if self.on_round is not None:
                try:
                    self.on_round(self.engine)
                except Exception:
                    log.exception("on_round callback failed")
        self._fail_all(ErrorKind.UNAVAILABLE, "the target model is shutting down")
        self._drain_inbox()
        if self.on_round is not None:
            self.on_round(self.engine)

    def _drain_inbox(self) -> None:
        """Requests submitted but never admitted get their final too (at shutdown)."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._final(item.handle, RequestError(ErrorKind.UNAVAILABLE, "the target model is shutting down"))

    def _watch_drafter(self) -> None:
        d = getattr(self.engine, "drafter", None)
        if d is not self._drafter:
            if d is not None:
                self.draft_attaches += 1
            self._drafter = d

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
            self._final(sub.handle, RequestError(ErrorKind.INVALID_ARG, str(e)))
            return
        if not sub.stream:
            seq.stream_text = False      # nobody reads its deltas: the engine decodes the text once, at the end
        secret = new_secret()
        key = None if self.cancel_inbox is None else self.cancel_inbox.key(seq.seq_id, secret)
        self._active[seq.seq_id] = _Active(sub.handle, seq, ChunkTracker(sub.stream), sub.want_stats, secret, key)

    def _check_cancelled(self) -> None:
        """Abort the requests that the cancel thread found cancelled."""
        if self._cancels.empty():
            return
        reported = set()          # cancelled inside the ensemble, reported by postprocessing
        direct = set()            # a cancelled request to this model
        while not self._cancels.empty():
            sid, secret = self._cancels.get()
            a = self._active.get(sid)
            if a is None:          # it ended meanwhile (or was reported twice)
                continue
            if secret is None:
                direct.add(sid)
            elif a.secret == secret:
                reported.add(sid)
        direct -= reported
        for sid in reported | direct:
            a = self._active.pop(sid)
            self.engine.abort(a.seq, "cancelled")      # frees its KV blocks
            self.cancelled += 1
            log.info("request %d (id %r) cancelled after %d tokens in %d rounds", sid,
                     getattr(a.handle, "request_id", ""), len(a.seq.output_ids), a.rounds)
            if sid in direct:
                self._final(a.handle, RequestError(ErrorKind.CANCELLED, "request was cancelled"))
            else:
                # Inside the ensemble the final message is a data response: an error from this step
                # while postprocessing steps are in flight leaves the ensemble request in flight
                # forever in Triton 2.51 (its ensemble scheduler stops counting steps after an error).
                self._final(a.handle, Chunk("", 0, True, finish_reason="cancelled"))

    def _emit(self, out) -> None:
        a = self._active.get(out.seq.seq_id)
        if a is None:
            return
        self.tokens_generated += len(out.new_token_ids)
        a.rounds += 1
        chunk = a.tracker.on_step(out)
        if chunk is None:
            return
        if out.finished:
            del self._active[out.seq.seq_id]
            chunk.finish_reason = out.seq.finish_reason
        if a.want_stats:
            chunk.stats = out.seq.stats.as_dict()
        chunk.cancel_key = a.cancel_key
        if out.finished:
            self._final(a.handle, chunk)
        else:
            self._outbox.put((a.handle, chunk, False))

    def _fail_all(self, kind: str, message: str) -> None:
        for sid, a in list(self._active.items()):
            try:
                self.engine.abort(a.seq, "error")
            except Exception:
                log.exception("abort of request %d failed", sid)
            self._final(a.handle, RequestError(kind, message))
        self._active.clear()

    # --- the cancel thread ------------------------------------------------------------------
    def _cancel_loop(self) -> None:
        """Forward the inbox's messages at once; ask every active request's handle every cancel_poll_s."""
        next_sweep = 0.0
        while not self._stop.is_set():
            wait_s = max(0.0, next_sweep - time.monotonic())
            if self.cancel_inbox is not None:
                for sid, secret in self.cancel_inbox.wait(wait_s):
                    self._cancels.put((sid, secret))
            elif self._stop.wait(wait_s):
                return
            if time.monotonic() < next_sweep:
                continue
            next_sweep = time.monotonic() + self.cancel_poll_s
            # list() copies the dict in one step under the GIL while the engine thread changes it
            for sid, a in list(self._active.items()):
                try:
                    cancelled = a.handle.is_cancelled()
                except Exception:      # the client is gone; treat it as a cancellation
                    cancelled = True
                if cancelled:
                    self._cancels.put((sid, None))

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

