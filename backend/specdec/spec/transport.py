"""The target <-> draft channel: torch.distributed point-to-point between two processes.

Rendezvous ``tcp://HOST:PORT``: the target (rank 0) hosts a ``TCPStore`` there and the draft
(rank 1) connects to it. Each side first publishes its device through the store, so both
pick the same backend: NCCL when both sides are CUDA devices (different GPUs), Gloo
otherwise (tensors then cross through host memory). Then ``init_process_group(backend,
store=..., rank, world_size=2, device_id=...)`` joins the default group; one channel per
process at a time.

Framing: header int64[3] = (command, n_ints, n_floats), then the int64 payload, then the
float32 payload when there is one. Sends are ``isend``: Gloo's ``send`` blocks until the peer
posts its receive, which would stall the target while the draft builds its tree. Handles are
kept until complete, so a tensor is never freed mid-send.

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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _device_info(device: torch.device) -> dict:
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else -1)
    return {"type": device.type, "index": index, "host": socket.gethostname()}


def choose_backend(mine: dict, theirs: dict) -> str:
    """NCCL between two distinct CUDA devices; Gloo otherwise."""
    both_cuda = mine["type"] == theirs["type"] == "cuda"
    same_gpu = mine["host"] == theirs["host"] and mine["index"] == theirs["index"]
    return "nccl" if both_cuda and not same_gpu else "gloo"


class Channel:
    """One end of the channel. ``connect`` blocks until the peer has joined (or ``should_stop``)."""

    def __init__(self, rank: int, backend: str, device: torch.device, store):
        self.rank, self.peer = rank, 1 - rank
        self.backend = backend
        self.device = device                                   # where this side computes
        self.xfer = device if backend == "nccl" else torch.device("cpu")
        self._store = store
        self._pending: list[tuple[object, torch.Tensor]] = []
        self.closed = False

    @classmethod
    def connect(cls, rank: int, rendezvous: str, device: torch.device, timeout_s: float = 120.0,
                connect_timeout_s: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> "Channel":
        """Join the rendezvous as ``rank``; raises TimeoutError after connect_timeout_s (None = never)."""
        if dist.is_initialized():
            raise RuntimeError("this process already has a torch.distributed default group; "
                               "a draft channel needs its own process (close the other LLM first)")
        host, port = parse_rendezvous(rendezvous)
        deadline = None if connect_timeout_s is None else time.monotonic() + connect_timeout_s
        poll = datetime.timedelta(seconds=_POLL_S)
        mine = _device_info(device)
        store = None
        while True:
            if should_stop():
                raise TimeoutError("connection cancelled")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"no peer joined {rendezvous} within {connect_timeout_s:.0f} s")
            try:
                if store is None:
                    store = dist.TCPStore(host, port, 2, rank == TARGET_RANK, timeout=poll, wait_for_workers=False)
                    store.set(f"specdec/dev{rank}", json.dumps(mine))
                if store.check([f"specdec/dev{1 - rank}"]):
                    theirs = json.loads(store.get(f"specdec/dev{1 - rank}"))
                    break
            except (RuntimeError, dist.DistError) as e:    # not there yet, or the target restarted its store
                if rank == DRAFT_RANK:
                    store = None
                log.debug("waiting for the peer at %s: %s", rendezvous, e)
            time.sleep(0.05)
        backend = choose_backend(mine, theirs)
        kwargs = {}
        if backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
            torch.cuda.set_device(device)                  # the current device is per thread: set it in this one
            kwargs["device_id"] = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        dist.init_process_group(backend, store=dist.PrefixStore("specdec/pg", store), rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        log.info("draft channel up: rank %d, %s, %s <-> %s", rank, backend, mine, theirs)
        return cls(rank, backend, device, store)

    # --- messages ---------------------------------------------------------------------------
    def send(self, msg) -> None:
        ints, floats = msg.encode()
        header = torch.tensor([msg.command.value, len(ints), 0 if floats is None else floats.numel()], dtype=torch.int64)
        parts = [header, torch.from_numpy(np.ascontiguousarray(ints, dtype=np.int64))]
        if floats is not None:
            parts.append(floats.detach().to(torch.float32).contiguous())
        try:
            self._reap()
            for t in parts:
                t = t.to(self.xfer, non_blocking=True)
                self._pending.append((dist.isend(t, self.peer), t))
        except Exception as e:   # the backend raises RuntimeError / DistError subclasses
            raise ChannelError(f"send {msg.command.name} failed: {e}") from e

    def recv(self):
        try:
            header = torch.empty(3, dtype=torch.int64, device=self.xfer)
            dist.recv(header, self.peer)
            cmd, n, nf = header.tolist()                   # host sync: the payload size
            ints = torch.empty(n, dtype=torch.int64, device=self.xfer)
            dist.recv(ints, self.peer)
            floats = None
            if nf:
                floats = torch.empty(nf, dtype=torch.float32, device=self.xfer)
                dist.recv(floats, self.peer)
            command = Command(cmd)
        except Exception as e:
            raise ChannelError(f"receive failed: {e}") from e
        return decode(command, ints.cpu().numpy(), floats)

    def _reap(self) -> None:
        self._pending = [(w, t) for w, t in self._pending if not w.is_completed()]

    def close(self) -> None:
        """Leave the group. Pending sends to a live peer get a moment to finish."""
        if self.closed:
            return
        self.closed = True
        end = time.monotonic() + 2.0
        while self._pending and time.monotonic() < end:
            self._reap()
            time.sleep(0.01)
        self._pending.clear()
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception as e:
            log.warning("destroying the draft channel's process group: %s", e)
        self._store = None
