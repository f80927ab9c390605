"""The target <-> draft channel: torch.distributed point-to-point between two processes.

Rendezvous ``tcp://HOST:PORT``: the target (rank 0) hosts a ``TCPStore`` there and the draft
(rank 1) connects to it (:class:`Rendezvous`). Each side first publishes its device through the
store, so both pick the same backend: NCCL when both sides are CUDA devices on different GPUs,
Gloo otherwise (two processes on one GPU included: NCCL refuses a duplicate GPU; tensors then
cross through host memory). The channel is a process group of its own (a standalone
``ProcessGroupGloo`` / ``ProcessGroupNCCL`` built on the rendezvous store), never
torch.distributed's default group, so one process can hold several channels, one after another or
at once (two async ``LLM`` objects, a tensor-parallel group beside a draft channel).

Framing: header int64[3] = (command, n_ints, n_floats), then the int64 payload, then the
float32 payload when there is one. Sends are ``isend``: Gloo's ``send`` blocks until the peer
posts its receive, which would stall the target while the draft builds its tree. Handles (and
their tensors) are kept until a message comes back from the peer: the peer handles messages
in order and answers only after reading everything sent before, so they are complete then.

Failure: any error of the backend (peer gone, timeout) is raised as :class:`ChannelError`.
With NCCL, a dead peer is noticed through the process-group timeout; we default
``TORCH_NCCL_ASYNC_ERROR_HANDLING=2`` (abort the communicator, keep the process) so the
target can fall back to AR instead of being torn down.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from urllib.parse import urlparse

import numpy as np
import torch
import torch.distributed as dist

from .messages import Command, decode

log = logging.getLogger(__name__)

TARGET_RANK, DRAFT_RANK = 0, 1
_POLL_S = 1.0


class ChannelError(RuntimeError):
    """The channel failed (peer gone, timeout, protocol error); the engine falls back to AR."""


def parse_rendezvous(url: str) -> tuple[str, int]:
    u = urlparse(url)
    if u.scheme != "tcp" or not u.hostname or not u.port:
        raise ValueError(f"rendezvous {url!r}: expected tcp://HOST:PORT")
    return u.hostname, u.port


def _device_info(device: torch.device) -> dict:
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else -1)
    return {"type": device.type, "index": index, "host": socket.gethostname()}


def choose_backend(mine: dict, theirs: dict) -> str:
    """NCCL between two distinct CUDA devices; Gloo otherwise."""
    both_cuda = mine["type"] == theirs["type"] == "cuda"
    same_gpu = mine["host"] == theirs["host"] and mine["index"] == theirs["index"]
    return "nccl" if both_cuda and not same_gpu else "gloo"


class Rendezvous:
    """The TCPStore at tcp://HOST:PORT. The target (rank 0) hosts it for as long as it wants a draft,
    so a worker that comes back finds it at the same address. Every connection takes a fresh
    *generation* of keys: the target bumps ``specdec/gen``, one worker claims that generation,
    both publish their device under it and build the process group under it; stale keys of an
    earlier connection are never read."""

    def __init__(self, url: str, rank: int):
        self.url, self.rank = url, rank
        self.host, self.port = parse_rendezvous(url)
        self.store = None
        self._taken = 0                   # worker: a generation some other worker claimed

    def _open(self):
        if self.store is None:            # the target binds; a worker connects (raises while nobody listens)
            self.store = dist.TCPStore(self.host, self.port, 2, self.rank == TARGET_RANK,
                                       timeout=datetime.timedelta(seconds=_POLL_S), wait_for_workers=False)
        return self.store

    def handshake(self, mine: dict, should_stop: Callable[[], bool], deadline: float | None) -> tuple[str, dict]:
        """Meet the peer; returns (key prefix of this connection, the peer's device info)."""
        gen, warned = None, False
        while True:
            if should_stop():
                raise TimeoutError("connection cancelled")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no peer joined {self.url} in time")
            try:
                store = self._open()
                if gen is None:
                    gen = self._generation(store, mine)
                if gen is not None:
                    other = f"specdec/{gen}/dev{1 - self.rank}"
                    if store.check([other]):
                        return f"specdec/{gen}/", json.loads(store.get(other))
            except (RuntimeError, dist.DistError) as e:     # nobody listening yet, or the target restarted
                if self.rank == DRAFT_RANK:
                    self.store, gen = None, None
                    log.debug("waiting for the target at %s: %s", self.url, e)
                elif self.store is None and not warned:         # the target cannot bind: say so once
                    warned = True
                    log.warning("cannot host the draft rendezvous %s (retrying): %s", self.url, e)
            time.sleep(0.05)

    def _generation(self, store, mine: dict) -> int | None:
        if self.rank == TARGET_RANK:
            gen = store.add("specdec/gen", 1)
        else:
            gen = store.add("specdec/gen", 0)
            if gen == 0 or gen == self._taken:
                return None                                   # no target yet / wait for its next generation
            if store.add(f"specdec/{gen}/claims", 1) != 1:
                self._taken = gen                             # another worker has it (or had it)
                return None
        store.set(f"specdec/{gen}/dev{self.rank}", json.dumps(mine))
        return gen


class Channel:
    """One end of the channel. ``connect`` blocks until the peer has joined (or ``should_stop``)."""

    def __init__(self, rank: int, backend: str, device: torch.device, group):
        self.rank, self.peer = rank, 1 - rank
        self.backend = backend
        self.group = group                                     # dist.ProcessGroupGloo / ProcessGroupNCCL
        self.device = device                                   # where this side computes
        self.xfer = device if backend == "nccl" else torch.device("cpu")
        self._pending: list[tuple[object, torch.Tensor]] = []
        self.closed = False

    @classmethod
    def connect(cls, rendezvous: Rendezvous, device: torch.device, timeout_s: float = 120.0,
                connect_timeout_s: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> "Channel":
        """Join as ``rendezvous.rank``; raises TimeoutError after connect_timeout_s (None = never)."""
        rank = rendezvous.rank
        deadline = None if connect_timeout_s is None else time.monotonic() + connect_timeout_s
        mine = _device_info(device)
        prefix, theirs = rendezvous.handshake(mine, should_stop, deadline)
        backend = choose_backend(mine, theirs)
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.PrefixStore(prefix + "pg/", rendezvous.store)
        if backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")    # read when the group is built
            torch.cuda.set_device(device)                  # the current device is per thread: set it in this one
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            group = dist.ProcessGroupNCCL(store, rank, 2, opts)
            if hasattr(group, "eager_connect_single_device"):
                group.eager_connect_single_device(device)
        else:
            group = dist.ProcessGroupGloo(store, rank, 2, timeout)
        log.info("draft channel up (%s): rank %d, %s, %s <-> %s", prefix.rstrip("/"), rank, backend, mine, theirs)
        return cls(rank, backend, device, group)

    # --- messages ---------------------------------------------------------------------------
    def send(self, msg) -> None:
        ints, floats = msg.encode()
        header = torch.tensor([msg.command.value, len(ints), 0 if floats is None else floats.numel()], dtype=torch.int64)
        parts = [header, torch.from_numpy(np.ascontiguousarray(ints, dtype=np.int64))]
        if floats is not None:
            parts.append(floats.detach().to(torch.float32).contiguous())
        err = None
        try:
            for t in parts:
                t = t.to(self.xfer, non_blocking=True)
                self._pending.append((self.group.send([t], self.peer, 0), t))
        except Exception as e:   # the backend raises RuntimeError / DistError subclasses
            err = f"send {msg.command.name} failed: {e}"
        if err is not None:      # raised outside the handler: no chained traceback holding the group
            raise ChannelError(err)

    def recv(self):
        err = None
        try:
            header = torch.empty(3, dtype=torch.int64, device=self.xfer)
            self.group.recv([header], self.peer, 0).wait()
            cmd, n, nf = header.tolist()                   # host sync: the payload size
            ints = torch.empty(n, dtype=torch.int64, device=self.xfer)
            self.group.recv([ints], self.peer, 0).wait()
            floats = None
            if nf:
                floats = torch.empty(nf, dtype=torch.float32, device=self.xfer)
                self.group.recv([floats], self.peer, 0).wait()
            command = Command(cmd)
            self._reap()
        except Exception as e:
            err = f"receive failed: {e}"
        if err is not None:
            raise ChannelError(err)
        return decode(command, ints.cpu().numpy(), floats)    # host sync (NCCL): messages are decoded on the host

    def _reap(self, timeout_s: float | None = None) -> None:
        """Finish the pending sends (Gloo only marks a send complete once waited on)."""
        kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        pending, self._pending = self._pending, []
        for w, _ in pending:
            w.wait(**kw)

    def close(self, finish: bool = True) -> None:
        """Leave the group. With ``finish``, pending sends (EXIT) get a moment to reach a live peer."""
        if self.closed:
            return
        self.closed = True
        if finish:
            try:
                self._reap(timeout_s=2.0)
            except Exception as e:      # the peer is gone: nothing to finish
                log.debug("pending sends at close: %s", e)
        self._pending.clear()
        group, self.group = self.group, None
        try:                                    # NCCL: abort frees the communicator without waiting for the peer
            if isinstance(group, getattr(dist, "ProcessGroupNCCL", ())) and hasattr(group, "abort"):
                group.abort()
            elif hasattr(group, "shutdown"):
                group.shutdown()
        except Exception as e:
            log.debug("closing the draft channel's process group: %s", e)
