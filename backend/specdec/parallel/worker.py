"""A worker rank (1..N-1) of a tensor-parallel target: ``python -m specdec.parallel.worker``.

Started by rank 0 (tp.py), which hosts the store named by ``--store``. The worker loads its shard,
joins the TP group, allocates its KV shard with rank 0's block count, then runs every forward
rank 0 broadcasts (tp_step.py) — padded ones through its own graph runner, eager ones from the
message's arrays — and returns on EXIT. Any exception is published as ``tp/error/R`` and ends
the process; so does rank 0's death (the parent watch below).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import threading
import time

import torch
import torch.distributed as dist

from ..layers import fused
from ..layers.tensor_parallel import TPGroup
from ..models.loader import DTYPES, load_model
from ..runner.paged import PagedRunner
from .tp import GROUP_TIMEOUT_S, STARTUP_TIMEOUT_S, WorkerSpec
from ..runner.tp_step import Eager, Exit, Graphs, Padded, StepChannel, eager_forward

log = logging.getLogger(__name__)


def _watch_parent(parent_pid: int) -> None:
    """Exit as soon as rank 0's process is gone (a blocked collective would otherwise wait for its timeout)."""
    def loop():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=loop, name="specdec-tp-parent-watch", daemon=True).start()


def _wait_key(store, key: str) -> bytes:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not store.check([key]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0 did not publish {key} in {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    return store.get(key)


def start(store, rank: int) -> PagedRunner:
    """Load this rank's shard, join the group, allocate the KV shard: a runner ready to serve."""
    spec = WorkerSpec(**json.loads(_wait_key(store, "tp/spec")))
    logging.getLogger("specdec").setLevel(spec.log_level)
    device = torch.device(spec.devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    group = TPGroup(rank, len(spec.devices))
    model = load_model(spec.target, device, spec.dtype, spec.impl, spec.max_model_len, tp=group).module
    store.set(f"tp/loaded/{rank}", "1")
    group.connect(store, device, GROUP_TIMEOUT_S)
    kv = json.loads(_wait_key(store, "tp/kv"))
    runner = PagedRunner(model, device, DTYPES[spec.dtype], kv["block_size"], kv["num_blocks"], kv["max_model_len"],
                         f"target rank {rank}", tp=StepChannel(group, device))
    store.set(f"tp/ready/{rank}", "1")
    return runner


@torch.inference_mode()
def serve(runner: PagedRunner) -> None:
    """Run rank 0's forwards until EXIT."""
    channel = runner.tp
    while True:
        msg, host, dev = channel.recv()
        if isinstance(msg, Padded):
            runner.attn_backend = msg.attention
            runner.graph.execute((msg.batch, msg.queries, msg.kv_span))
        elif isinstance(msg, Eager):
            runner.attn_backend = msg.attention
            eager_forward(runner, msg, host, dev)
        elif isinstance(msg, Graphs):
            if msg.capture and runner.device.type == "cuda":      # as the engine does on rank 0
                fused.enable_compile(runner.device, runner.dtype)
            runner.enable_graphs(msg.max_batch, msg.max_q, msg.capture)
        elif isinstance(msg, Exit):
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="specdec tensor-parallel worker (a rank > 0 of the target)")
    p.add_argument("--store", required=True, help="HOST:PORT of rank 0's TCPStore")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--parent-pid", type=int, required=True, help="rank 0's process: exit when it is gone")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"[tp rank {a.rank} %(process)d] %(levelname)s %(name)s: %(message)s")
    _watch_parent(a.parent_pid)
    host, port = a.store.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=STARTUP_TIMEOUT_S))
    try:
        runner = start(store, a.rank)
        serve(runner)
    except Exception as e:
        log.exception("tensor-parallel rank %d failed", a.rank)
        try:
            store.set(f"tp/error/{a.rank}", f"{type(e).__name__}: {e}")
        except Exception:           # rank 0 is gone too
            pass
        return 1
    runner.tp.group.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
