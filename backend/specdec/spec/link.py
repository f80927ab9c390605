"""Getting the engine a channel to its draft worker, in the background, and again after failures.

Two ways to find the worker:

* spawn (``mode="async"`` with a draft model): the link picks a free local port and starts
  ``python -m specdec.spec.draft_worker`` pointing at it. After a failure it kills that worker
  and starts a fresh one at the same rendezvous, at most ``MAX_RESTARTS`` times.
* remote (``draft="remote:tcp://HOST:PORT"``): a worker is, or will be, connecting there (the
  Triton ``draft`` model). The link waits as long as it takes; after a failure it waits at the
  same rendezvous for the worker's next ``serve_draft`` call.

In both cases the engine hosts the rendezvous's TCPStore for its whole life; each connection
uses a new key generation (transport.Rendezvous), so nothing stale is ever read.

The connecting thread only produces a :class:`Channel`; the engine's ``step()`` thread takes
it (``take``), does the CONFIG/HELLO handshake and owns it from then on (attach_drafter).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import torch

from .transport import TARGET_RANK, Channel, Rendezvous, free_port

log = logging.getLogger(__name__)

MAX_RESTARTS = 3
STARTUP_TIMEOUT_S = 300.0


@dataclass(slots=True)
class SpawnArgs:
    draft: str
    device: str
    dtype: str
    target: str | None = None
    max_batch_size: int = 16
    max_model_len: int | None = None
    block_size: int = 16
    num_threads: int | None = None
    host: str = "127.0.0.1"

    def command(self, rendezvous: str) -> list[str]:
        cmd = [python_executable(), "-m", "specdec.spec.draft_worker", "--draft", self.draft, "--device", self.device,
               "--dtype", self.dtype, "--rendezvous", rendezvous, "--max-batch-size", str(self.max_batch_size),
               "--block-size", str(self.block_size), "--parent-pid", str(os.getpid()),
               "--log-level", logging.getLevelName(logging.getLogger("specdec").getEffectiveLevel())]
        if self.target:
            cmd += ["--target", self.target]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.num_threads:
            cmd += ["--num-threads", str(self.num_threads)]
        return cmd


def stop_process(p: subprocess.Popen, grace_s: float, what: str) -> None:
    """Wait up to ``grace_s`` for a child that was asked to exit, then kill it (and reap it)."""
    try:
        p.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("%s %d did not exit; killing it", what, p.pid)
        p.kill()
        p.wait()


def python_executable() -> str:
    """The interpreter to start the worker with. Embedded interpreters (Triton's python backend stub)
    may report their host binary as sys.executable; fall back to the base interpreter or PATH."""
    for exe in (sys.executable, getattr(sys, "_base_executable", None), shutil.which("python3")):
        if exe and os.path.basename(exe).startswith("python"):
            return exe
    raise RuntimeError("no Python interpreter found to start the draft worker; set draft='remote:...' instead")


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
                proc = self.proc = subprocess.Popen(self.spawn.command(rendezvous))
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


# --- engine glue (called by LLMEngine._start_link / _attach) -----------------------------------
def open_link(engine) -> DraftLink:
    """Start connecting ``engine`` to its draft worker. A spawned worker is waited for and attached
    before returning (so a bad draft fails in the constructor); a remote one attaches later."""
    spec, cfg = engine.cfg.spec, engine.cfg
    if spec.remote:
        link = DraftLink(engine.device, rendezvous=spec.draft[len("remote:"):], timeout_s=spec.channel_timeout_s)
        link.start()
        return link
    target = None
    if spec.draft.startswith("self:"):
        if engine.target.kind != "native":
            raise ValueError("draft 'self:N' needs a native Llama-family target")
        target = cfg.target
    else:
        from ..models.loader import has_tokenizer, load_tokenizer
        from ..models.registry import resolve
        folder = resolve(spec.draft)
        if has_tokenizer(folder) and load_tokenizer(folder).get_vocab() != engine.tokenizer.get_vocab():
            raise ValueError(f"draft {folder}: its tokenizer differs from the target's ({engine.target.folder}); "
                             "draft and target must share one vocabulary")
    threads = None
    if engine.draft_device.type == "cpu" and engine.device.type == "cpu":
        threads = max(1, torch.get_num_threads() // 2)          # two processes share the cores
    args = SpawnArgs(spec.draft, str(engine.draft_device), cfg.dtype, target, cfg.max_batch_size,
                     engine.max_model_len, cfg.cache.block_size, threads)
    link = engine.link = DraftLink(engine.device, spawn=args, timeout_s=spec.channel_timeout_s)
    link.start()
    try:
        engine._attach(link.wait())
        if engine.drafter is None:
            raise RuntimeError("the draft worker connected but the handshake failed (see the log)")
    except BaseException:
        engine.close()
        raise
    return link


def remote_drafter(engine, channel: Channel):
    """CONFIG/HELLO over a fresh channel; None (and a reconnect) when the handshake fails."""
    from .remote import RemoteDrafter
    from .transport import ChannelError
    cfg = engine.cfg
    try:
        drafter = RemoteDrafter(channel, cfg.spec, cfg.mode == "async", engine.runner.vocab_size, cfg.max_batch_size,
                                engine.max_model_len, cfg.seed, engine.device, engine.metrics)
    except ChannelError as e:
        log.error("draft handshake failed: %s", e)
        channel.close()
        engine.link.failed()
        return None
    if drafter.hello.vocab_size < len(engine.tokenizer):
        drafter.close()
        msg = (f"draft vocab_size {drafter.hello.vocab_size} < the target tokenizer's {len(engine.tokenizer)} "
               "tokens: draft and target must share one vocabulary")
        if not cfg.spec.remote:
            raise ValueError(msg)
        engine.link.error = msg                       # a remote worker: stay in AR mode, do not reconnect
        log.error("%s; staying in AR mode", msg)
        return None
    return drafter
