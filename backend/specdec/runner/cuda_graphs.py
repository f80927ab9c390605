"""Static-buffer forwards for decode-shaped steps, replayed from CUDA graphs.

Decode (1 query per row), verify (K+1 queries per row) and the draft's steps all have few
queries per sequence. They run as a *uniform padded batch*: B rows x Q queries, B rounded up
to a batch bucket, Q exact, and the attention span rounded up to a KV bucket (a power of two).
Every input lives in one static buffer (ids, RoPE positions, storage positions, slots, block
tables); a step copies its host arrays into them and replays the graph captured for
(B bucket, Q, KV bucket) the first time that shape was seen. Padded rows and queries write to
the sentinel slot (a block the manager never hands out) and their logits are dropped.

With ``capture=False`` the same padded forward runs eagerly: that is how CPU tests check it
against the variable-length path.

Tensor parallelism: the static buffer is the payload of the step message (tp_step.py). Rank 0
writes [header | buffer] in its one copy and broadcasts it; each worker replays the graph the
header names (:meth:`GraphRunner.execute`), so all ranks capture the same shapes in the same order.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from . import tp_step

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
MIN_KV_BUCKET = 64


class GraphRunner:
    def __init__(self, runner, max_batch: int, max_q: int, capture: bool):
        self.r = runner
        self.capture = capture and runner.device.type == "cuda"
        self.max_batch, self.max_q = max_batch, max_q
        self.buckets = [b for b in BATCH_BUCKETS if b < max_batch] + [max_batch]
        bs = runner.blocks.block_size
        self.max_kv = -(-runner.max_model_len // bs) * bs
        self.max_blocks = self.max_kv // bs
        dev = runner.device
        n = max_batch * max_q
        # one static buffer; each (batch, queries) shape uses views at its own offsets, so a step
        # is ONE host-to-device copy: [ids | RoPE positions | storage positions | slots | tables]
        size = 4 * n + max_batch * self.max_blocks
        tp = getattr(runner, "tp", None)  # tensor parallel: [header | buffer] is the broadcast step message
        self.head = 0 if tp is None else tp_step.HEADER
        self.msg = torch.zeros(size, dtype=torch.long, device=dev) if tp is None else tp.reserve(size)
        self.buf = self.msg[self.head:]
        # pinned staging buffers in a ring: steps may be queued without a host sync in between
        # (the draft loop), so a buffer is reused only once the copy that read it has run
        pin = dev.type == "cuda"
        self._ring = [torch.zeros_like(self.msg, device="cpu", pin_memory=pin) for _ in range(4 if pin else 1)]
        self._ring_events = [None] * len(self._ring)
        self._ring_pos = 0
        self.graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.replays = 0

    def fits(self, feeds) -> bool:
        return (len(feeds) <= self.max_batch and all(f.mask is None for f in feeds)
                and max(len(f.tokens) for f in feeds) <= self.max_q)

    def kv_bucket(self, n: int) -> int:
        p = MIN_KV_BUCKET
        while p < n:
            p *= 2
        bs = self.r.blocks.block_size
        return min(-(-p // bs) * bs, self.max_kv)

    def forward(self, feeds, device_tokens=None) -> torch.Tensor:
        r, blocks = self.r, self.r.blocks
        bs = blocks.block_size
        B, Q = len(feeds), max(len(f.tokens) for f in feeds)
        Bb = next(b for b in self.buckets if b >= B)
        KV = self.kv_bucket(max(f.start + len(f.tokens) for f in feeds))
        NB = KV // bs
        sentinel_block = blocks.num_blocks
        ids = np.zeros((Bb, Q), dtype=np.int64)
        pos = np.zeros((Bb, Q), dtype=np.int64)
        qpos = np.zeros((Bb, Q), dtype=np.int64)
        slots = np.full((Bb, Q), blocks.sentinel_slot, dtype=np.int64)
        tables = np.full((Bb, NB), sentinel_block, dtype=np.int64)
        rows = []
        for b, f in enumerate(feeds):
            n = len(f.tokens)
            end = f.start + n
            if f.dummy:                       # padding row: sentinel slot, position 0
                rows.extend(range(b * Q + n - f.num_logits, b * Q + n))
                continue
            if end > r.max_model_len:
                raise ValueError(f"sequence {f.seq_id}: {end} tokens exceed max_model_len={r.max_model_len}")
            table = np.asarray(blocks.ensure(f.seq_id, end), dtype=np.int64)
            p = np.arange(f.start, end)
            ids[b, :n] = f.tokens
            pos[b, :n] = p if f.positions is None else f.positions
            qpos[b, :n] = p
            slots[b, :n] = table[p // bs] * bs + p % bs
            tables[b, : min(len(table), NB)] = table[:NB]
            rows.extend(range(b * Q + n - f.num_logits, b * Q + n))
        m = Bb * Q
        host = np.concatenate([ids.ravel(), pos.ravel(), qpos.ravel(), slots.ravel(), tables.ravel()])
        if self.head:
            host = np.concatenate([tp_step.encode_header(tp_step.Padded(Bb, Q, KV, r.attn_backend)), host])
        slot = self._ring_pos = (self._ring_pos + 1) % len(self._ring)
        if self._ring_events[slot] is not None:
            self._ring_events[slot].synchronize()       # host waits only if that old copy is still queued
        st = self._ring[slot][: len(host)]
        st.numpy()[:] = host
        self.msg[: len(host)].copy_(st, non_blocking=True)
        if self.r.device.type == "cuda":
            ev = self._ring_events[slot] = torch.cuda.Event()
            ev.record()
        if device_tokens is not None:         # tokens sampled on the device: no host round trip
            dt, col0 = device_tokens
            self.buf[:m].view(Bb, Q)[:B, col0:col0 + dt.shape[1]].copy_(dt[:, : Q - col0])
        if self.head:
            r.tp.broadcast()                  # the workers run the same shape from the same buffer
        out = self.execute((Bb, Q, KV))
        if rows == list(range(len(rows))):             # e.g. decode: the first B rows, no gather
            return out[: len(rows)]
        idx = torch.tensor(rows, dtype=torch.long).to(r.device, non_blocking=True)
        return out[idx]

    def execute(self, key: tuple[int, int, int]) -> torch.Tensor:
        """The padded forward of shape key = (batch bucket, queries, KV bucket) over the buffer as it
        stands: replayed (captured the first time) or, without capture, run eagerly."""
        if not self.capture:
            return self._run(*key)
        if key not in self.graphs:
            self._capture(key)
        graph, out = self.graphs[key]
        graph.replay()
        self.replays += 1
        return out

    def _views(self, Bb: int, Q: int, KV: int):
        m, NB = Bb * Q, KV // self.r.blocks.block_size
        b = self.buf
        return (b[:m], b[m:2 * m], b[2 * m:3 * m].view(Bb, Q), b[4 * m:4 * m + Bb * NB].view(Bb, NB), b[3 * m:4 * m])

    def _run(self, Bb: int, Q: int, KV: int) -> torch.Tensor:
        ids, pos, qpos, tables, slots = self._views(Bb, Q, KV)
        return self.r.model.forward_padded(ids, pos, qpos, tables, slots, self.r.kv_caches, KV, self.r.attn_backend)

    def _capture(self, key) -> None:
        Bb, Q, KV = key
        stream = torch.cuda.Stream(self.r.device)
        stream.wait_stream(torch.cuda.current_stream(self.r.device))
        with torch.cuda.stream(stream):   # warm-up outside the graph (compiles, allocates workspaces)
            for _ in range(2):
                self._run(Bb, Q, KV)
        torch.cuda.current_stream(self.r.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # tensor parallel: NCCL's watchdog thread queries events while we capture; "thread_local"
        # keeps its calls from invalidating this thread's capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local" if self.head else "global"):
            out = self._run(Bb, Q, KV)
        self.pool = graph.pool()
        self.graphs[key] = (graph, out)
        log.info("%s: captured CUDA graph for batch %d x %d queries, KV span %d (%d graphs)",
                 self.r.name, Bb, Q, KV, len(self.graphs))
