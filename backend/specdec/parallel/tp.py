"""A tensor-parallel target: rank 0 (the engine's process) starts ranks 1..N-1 and keeps them in step.

Processes: rank 0 runs the engine — scheduler, block managers, sampling, the draft (TP = 1, on its
own device) — and its own shard of the target. Every other rank is ``python -m
specdec.parallel.worker`` on its own device: it loads its shard (reading only its slices of the
safetensors), allocates its KV shard (KV heads / tp, as many blocks as rank 0) and then runs the
forwards that rank 0 broadcasts (tp_step.py) until EXIT. Block tables live in rank 0's
BlockManager only; a worker's state is its weights and its KV shard.

Start-up goes through a TCPStore that rank 0 hosts on a free local port (keys under ``tp/``):
``spec`` (what to load, rank 0 -> workers), ``loaded/R``, ``kv`` (the KV pool size rank 0 chose),
``ready/R`` and ``error/R`` (a worker's exception). The TP group's own rendezvous uses the same
store under ``tp/pg/``. None of this touches torch.distributed's default group, which is the SSD
draft channel's (spec/transport.py), so a TP target works in every mode.

Lifetime: :meth:`TensorParallel.close` sends EXIT and waits for the workers; a worker also exits
when rank 0's process is gone (it watches its parent), and a finalizer kills workers whose
engine was dropped without close(). A worker waits for the next forward as long as the engine
idles (the group's timeout is long); instead of timeouts, rank 0 watches its workers and aborts
the group when one dies, so a pending collective fails rather than hangs.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..layers.tensor_parallel import TPGroup
from ..processes import free_port, spawn, stop_process
from ..runner.tp_step import Exit, StepChannel

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 900.0          # loading a large shard can take minutes
GROUP_TIMEOUT_S = 30 * 86400.0     # a worker's wait for the next forward lasts as long as the engine idles
EXIT_GRACE_S = 10.0


@dataclass(slots=True)
class WorkerSpec:
    """What every worker loads (rank 0 -> workers through the store, as JSON)."""

    target: str
    dtype: str
    impl: str
    max_model_len: int | None
    devices: list[str]                 # one per rank; rank r uses devices[r]
    num_threads: int | None = None     # CPU ranks: torch intra-op threads
    log_level: str = "WARNING"


def target_devices(device: str, tp: int, devices: list[str] | None = None) -> list[str]:
    """One device per rank: ``devices`` as given, else tp copies of "cpu", or cuda:i, cuda:i+1, ... from ``device``."""
    if devices:
        return list(devices)
    d = torch.device(device)
    if d.type != "cuda":
        return [device] * tp
    first = d.index or 0
    return [f"cuda:{first + r}" for r in range(tp)]


class TensorParallel:
    """Rank 0's handle: the worker processes, the TP group (``group``) and the step channel (``channel``)."""

    def __init__(self, spec: WorkerSpec):
        self.spec, self.size = spec, len(spec.devices)
        self.device = torch.device(spec.devices[0])
        self.group = TPGroup(0, self.size)            # shapes now, connected in connect()
        self.channel: StepChannel | None = None
        host = "127.0.0.1"
        port = free_port(host)
        self.store = dist.TCPStore(host, port, self.size, True, timeout=datetime.timedelta(seconds=STARTUP_TIMEOUT_S),
                                   wait_for_workers=False)
        self.store.set("tp/spec", json.dumps(dataclasses.asdict(spec)))
        self.procs = [spawn("specdec.parallel.worker", ["--store", f"{host}:{port}", "--rank", str(r)])
                      for r in range(1, self.size)]
        self._finalizer = weakref.finalize(self, _kill, list(self.procs))
        log.info("tensor parallel: %d ranks on %s; workers %s", self.size, spec.devices, [p.pid for p in self.procs])

    def connect(self, num_blocks: int, block_size: int, max_model_len: int) -> None:
        """After rank 0 loaded its shard and sized its KV pool: join the group, let every worker
        allocate the same pool, and wait until all are ready to serve."""
        self._wait("loaded")
        self.group.connect(self.store, self.device, GROUP_TIMEOUT_S)
        self.channel = StepChannel(self.group, self.device)
        self.store.set("tp/kv", json.dumps({"num_blocks": num_blocks, "block_size": block_size,
                                            "max_model_len": max_model_len}))
        self._wait("ready")
        self._closing = threading.Event()
        threading.Thread(target=self._watch, name="specdec-tp-watch", daemon=True).start()

    def _watch(self) -> None:
        """A worker that dies (outside close) aborts the group: rank 0's pending and next collectives
        raise instead of waiting for a peer that will never answer."""
        while not self._closing.wait(0.5):
            dead = [(r, p.returncode) for r, p in enumerate(self.procs, 1) if p.poll() is not None]
            if dead:
                log.error("tensor-parallel rank %d exited (code %s); aborting the group", *dead[0])
                backend = self.group.backend
                if backend is not None and hasattr(backend, "abort"):
                    backend.abort()
                return

    def _wait(self, state: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pending = set(range(1, self.size))
        while pending:
            for r in sorted(pending):
                if self.store.check([f"tp/error/{r}"]):
                    raise RuntimeError(f"tensor-parallel rank {r} failed: {self.store.get(f'tp/error/{r}').decode()}")
                if self.store.check([f"tp/{state}/{r}"]):
                    pending.discard(r)
                elif self.procs[r - 1].poll() is not None:
                    raise RuntimeError(f"tensor-parallel rank {r} exited with code {self.procs[r - 1].returncode} "
                                       f"before it was {state} (see its log above)")
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"tensor-parallel ranks {sorted(pending)} not {state} after {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(0.02)

    def close(self) -> None:
        """EXIT to the workers, leave the group, then wait for them (kill after a grace period). Idempotent.

        Order matters with NCCL: rank 0 tears its communicator down (abort) right after the EXIT
        broadcast has completed on its side, before it waits for the workers. Waiting first deadlocks
        when a worker's own shutdown waits for rank 0 (seen on two H200s: "worker did not exit")."""
        if getattr(self, "_closing", None) is not None:
            self._closing.set()
        if self.channel is not None and all(p.poll() is None for p in self.procs):
            try:
                self.channel.send(Exit())
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)   # the broadcast has left this rank before the abort
            except Exception as e:      # a worker already gone: the collective fails, they are killed below
                log.warning("tensor parallel: EXIT not delivered (%s)", e)
        self.channel = None
        self.group.shutdown()
        for p in self.procs:
            stop_process(p, EXIT_GRACE_S, "tensor-parallel worker")
        self._finalizer.detach()
        self.store = None


def _kill(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
