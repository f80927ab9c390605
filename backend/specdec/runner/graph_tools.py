"""What every static-buffer program shares: shape buckets, the pinned staging ring, graph capture.

Used by :class:`~.cuda_graphs.GraphRunner` (forwards, verify epilogues, the draft loop) and by the SSD
tree steps (draft/tree_steps.py).
"""
from __future__ import annotations

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
MIN_KV_BUCKET = 64


def batch_buckets(max_batch: int) -> list[int]:
    return [b for b in BATCH_BUCKETS if b < max_batch] + [max_batch]


def kv_bucket(n: int, block_size: int, max_kv: int) -> int:
    """The attention span a step of ``n`` positions runs at: a power of two >= 64, in whole blocks, <= max_kv."""
    p = MIN_KV_BUCKET
    while p < n:
        p *= 2
    return min(-(-p // block_size) * block_size, max_kv)


def kv_buckets(n: int, block_size: int, max_kv: int) -> list[int]:
    """The context buckets of steps over 1 .. n positions (:func:`kv_bucket` of each), smallest first."""
    p = MIN_KV_BUCKET
    out = {kv_bucket(p, block_size, max_kv)}
    while p < n:
        p *= 2
        out.add(kv_bucket(p, block_size, max_kv))
    return sorted(out)


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """t [n, ...] -> [rows, ...] for a batch bucket: padding rows repeat row 0 (their results are dropped)."""
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t[:1].expand(rows - t.shape[0], *t.shape[1:])])


class StagingRing:
    """Pinned host buffers that feed a static device buffer with one asynchronous copy each.

    Steps may be queued without a host sync in between (the draft loop, overlapped AR steps), so a
    host buffer is reused only once the copy that read it has run (its event)."""

    def __init__(self, like: torch.Tensor, depth: int = 4):
        self.cuda = like.device.type == "cuda"
        self.ring = [torch.zeros(like.numel(), dtype=like.dtype, pin_memory=self.cuda) for _ in range(depth if self.cuda else 1)]
        self.events = [None] * len(self.ring)
        self.pos = 0

    def copy_to(self, dst: torch.Tensor, host) -> None:
        """dst[:len(host)] = host (a numpy array), asynchronously."""
        slot = self.pos = (self.pos + 1) % len(self.ring)
        if self.events[slot] is not None:
            self.events[slot].synchronize()       # host waits only if that old copy is still queued
        st = self.ring[slot][: len(host)]
        st.numpy()[:] = host
        dst[: len(host)].copy_(st, non_blocking=True)
        if self.cuda:
            ev = self.events[slot] = torch.cuda.Event()
            ev.record()


_captured = 0


def captures() -> int:
    """Graphs captured in this process so far, and with graphs "padded" (no capture) the keys first run, which
    a GPU would have captured there: so CPU runs show where captures land. A capture is a one-time cost (three
    runs of the program in Python, compiles, instantiation: ~10-200 ms); a timing that spans one is not a
    steady-state time."""
    return _captured


def count_capture() -> None:
    """One more capture (or, padded, one key first run) for :func:`captures`."""
    global _captured
    _captured += 1


def capture(program, device: torch.device, pool=None, thread_local: bool = False):
    """(graph, outputs) of ``program`` captured on a side stream after two warm-up runs (compiles,
    workspaces). thread_local: tensor parallelism, where NCCL's watchdog thread queries events while
    we capture; "thread_local" keeps its calls from invalidating this thread's capture."""
    count_capture()
    cur = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(cur)
    with torch.cuda.stream(stream):
        for _ in range(2):
            program()
    cur.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local" if thread_local else "global"):
        out = program()
    cur.wait_stream(stream)
    return graph, out
