"""Getting the engine a channel to its draft worker, in the background, and again after failures.

Two ways to find the worker:

* spawn (``mode="async"`` with a draft model): the link picks a free local port and starts
  ``python -m specdec.draft.worker`` pointing at it. After a failure it kills that worker
  and starts a fresh one at the same rendezvous, at most ``MAX_RESTARTS`` times.
* remote (``draft="remote:tcp://HOST:PORT"``): a worker is, or will be, connecting there (the
  Triton ``draft`` model). The link waits as long as it takes; after a failure it waits at the
  same rendezvous for the worker's next ``serve_draft`` call.

In both cases the engine hosts the rendezvous's TCPStore for its whole life; each connection
uses a new key generation (transport.Rendezvous), so nothing stale is ever read.

The connecting thread only produces a :class:`Channel`; the engine's ``step()`` thread takes it
(``take``, through :class:`~.slot.DraftSlot`), does the CONFIG/HELLO handshake and owns it from then on.
"""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..processes import free_port, spawn, stop_process
from .channel import TARGET_RANK, Channel, Rendezvous

log = logging.getLogger(__name__)

MAX_RESTARTS = 3
STARTUP_TIMEOUT_S = 300.0


@dataclass(slots=True)
class SpawnArgs:
    """A local draft worker: the engine's config (the worker runs on its ``draft_device``), torch
    threads for a CPU worker, and the host the rendezvous binds."""

    config: EngineConfig
    num_threads: int | None = None
    host: str = "127.0.0.1"

    def start(self, rendezvous: str) -> subprocess.Popen:
        level = logging.getLevelName(logging.getLogger("specdec").getEffectiveLevel())
        args = ["--config", self.config.to_json(), "--rendezvous", rendezvous, "--log-level", level]
        if self.num_threads:
            args += ["--num-threads", str(self.num_threads)]
        return spawn("specdec.draft.worker", args)


class DraftLink:
    def __init__(self, device: torch.device, rendezvous: str | None = None, spawn: SpawnArgs | None = None,
                 timeout_s: float = 120.0):
        if (rendezvous is None) == (spawn is None):
            raise ValueError("give exactly one of rendezvous (remote worker) or spawn (local worker)")
        if rendezvous is None:
            rendezvous = f"tcp://{spawn.host}:{free_port(spawn.host)}"
        self.device, self.rendezvous, self.spawn, self.timeout_s = device, rendezvous, spawn, timeout_s
        self.meeting = Rendezvous(rendezvous, TARGET_RANK)
        self.proc: subprocess.Popen | None = None
        self.restarts = -1                             # spawns after the first
        self.error: str | None = None                  # set when the link gave up
        self._ready: Channel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- engine side ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="specdec-draft-link", daemon=True)
        self._thread.start()

    def take(self) -> Channel | None:
        """The newly connected channel, once (None while connecting)."""
        with self._lock:
            ch, self._ready = self._ready, None
        return ch

    def wait(self, timeout_s: float = STARTUP_TIMEOUT_S) -> Channel:
        """Block until connected (used at startup with a spawned worker); raises if it cannot be."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            ch = self.take()
            if ch is not None:
                return ch
            if self.error is not None:
                raise RuntimeError(self.error)
            time.sleep(0.02)
        raise TimeoutError(f"the draft worker did not connect within {timeout_s:.0f} s")

    def failed(self) -> None:
        """The attached channel broke (and was closed by the engine): reconnect in the background."""
        if self._stop.is_set() or self.error is not None:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self.start()

    def close(self, grace_s: float = 10.0) -> None:
        """Stop connecting and end the spawned worker (after the engine sent EXIT, it exits itself)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=grace_s)
        ch = self.take()
        if ch is not None:
            ch.close()
        self._end_proc(grace_s)
        self.meeting.store = None                      # stop hosting the rendezvous

    # --- connecting thread ------------------------------------------------------------------
    def _end_proc(self, grace_s: float) -> None:
        p, self.proc = self.proc, None
        if p is not None:
            stop_process(p, grace_s, "draft worker")

    def _run(self) -> None:
        while not self._stop.is_set():
            rendezvous, proc = self.rendezvous, None
            if self.spawn is not None:
                if self.proc is not None:
                    self.proc.kill()
                    self._end_proc(5.0)
                if self.restarts > MAX_RESTARTS:
                    self.error = f"the draft worker was restarted {MAX_RESTARTS} times; staying in AR mode"
                    log.error(self.error)
                    return
                self.restarts += 1
                proc = self.proc = self.spawn.start(rendezvous)
                log.info("started draft worker %d at %s", proc.pid, rendezvous)
            gone = (lambda: self._stop.is_set() or (proc is not None and proc.poll() is not None))
            try:
                ch = Channel.connect(self.meeting, self.device, self.timeout_s,
                                     STARTUP_TIMEOUT_S if proc is not None else None, gone)
            except Exception as e:                     # worker died while loading, timeout, port taken, ...
                if self._stop.is_set():
                    return
                if proc is not None:                   # a worker that cannot start will not do better next time
                    code = proc.poll()
                    self.error = (f"the draft worker did not connect ({e}); exit code {code}, "
                                  "see its log above")
                    log.error(self.error)
                    proc.kill()
                    return
                log.warning("waiting for the draft worker at %s: %s", rendezvous, e)
                time.sleep(0.5)
                continue
            with self._lock:
                self._ready = ch
            return
