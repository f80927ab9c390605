"""Static-buffer forwards for decode-shaped steps, replayed from CUDA graphs.

Decode (1 query per row), verify (K+1 queries per row) and the draft's steps all have few
queries per sequence. They run as a *uniform padded batch*: B rows x Q queries, B rounded up
to a batch bucket, Q exact (but where its value depends on the rounds before, below), and the
attention span rounded up to a KV bucket (a power of two).
Every input lives in one static buffer (ids, RoPE positions, storage positions, slots, block
tables, per-row ints); a step copies its host arrays into it (ONE host-to-device copy from a
pinned staging ring) and replays the graph captured for its key the first time that key was
seen. Padded rows and queries write to the sentinel slot (a block the manager never hands out)
and their outputs are dropped.

Three kinds of graphs:

* :meth:`GraphRunner.forward`: one forward, key (B bucket, Q, KV bucket); it returns logits. A
  forward that asks for no logits (K/V writes: a draft's catch-up) runs at Q = max_q.
* the same with an *epilogue*, key + the epilogue's name: work on the padded logits captured in
  the same graph (verification's greedy acceptance, engine/verify_step.py), so a verify round is
  one replay and one readback.
* :meth:`GraphRunner.loop`: the draft loop (draft/loop.py), key (B bucket, catch-up queries (at
  least LOOP_QUERIES), steps, KV bucket, sampler): K forwards and their sampling, each step fed by
  the previous step's tokens on the device, in one graph.

So the keys a run of greedy rows meets, whatever its rounds accept, lie in a grid of batch bucket x
context bucket x draft count that a warm-up can run through first (benchmark/run.py warm_graphs).

With ``capture=False`` the same padded programs run eagerly: that is how CPU tests check them
against the variable-length path. Each key's first run there counts as a capture
(graph_tools.captures), so a CPU run shows where a GPU run would capture.

Tensor parallelism: the static buffer is the payload of the step message (tp_step.py). Rank 0
writes [header | buffer] in its one copy and broadcasts it; each worker replays the graph the
header names (:meth:`GraphRunner.execute`), so all ranks capture the same shapes in the same order.
Epilogues run on rank 0 only (they have no collectives); loops are for drafts, never split.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np
import torch

from ..transfer import upload
from . import tp_step
from .feed import Feed
from .graph_tools import StagingRing, batch_buckets, capture, count_capture, kv_bucket, kv_buckets, pad_rows

log = logging.getLogger(__name__)

# queries of a draft loop's step 0, at least: its catch-up is 1 token, or 2 after a round that accepted every draft
# (draft/loop.py writes longer ones first: LOOP_CATCH_UP), and both run at 2, so the key does not depend on the
# round before, which no warm-up can schedule
LOOP_QUERIES = 2


class GraphRunner:
    def __init__(self, runner, max_batch: int, max_q: int, capture: bool):
        self.r = runner
        self.capture = capture and runner.device.type == "cuda"
        self.max_batch, self.max_q = max_batch, max_q
        self.buckets = batch_buckets(max_batch)
        bs = runner.blocks.block_size
        self.max_kv = -(-runner.max_model_len // bs) * bs
        self.max_blocks = self.max_kv // bs
        dev = runner.device
        n = max_batch * max_q
        # one static buffer; each program uses views at its own offsets, so a step is ONE
        # host-to-device copy. forward: [ids | RoPE pos | storage pos | slots | tables | row ints];
        # loop: [step-0 ids | pos | slots | last-query rows | later steps' pos | slots | tables]
        size = 4 * n + max_batch * (2 + 2 * max_q) + max_batch * self.max_blocks
        tp = getattr(runner, "tp", None)  # tensor parallel: [header | buffer] is the broadcast step message
        self.head = 0 if tp is None else tp_step.HEADER
        self.msg = torch.zeros(size, dtype=torch.long, device=dev) if tp is None else tp.reserve(size)
        self.buf = self.msg[self.head:]
        self._ring = StagingRing(self.msg)
        self.shift = torch.zeros(max_batch, dtype=torch.long, device=dev)   # per-row position shifts (_shifted)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, object, list[torch.Tensor]]] = {}
        self.padded_keys: set[tuple] = set()    # without capture: the keys run so far (each counted as a capture)
        self.padded_out: dict[tuple, object] = {}   # ... and each one's output buffer (_as_static)
        self.pool = None
        self.replays = 0
        self.loops = 0                       # draft loops run as one program (graph or padded)

    # --- shapes ---------------------------------------------------------------------------
    def fits(self, feeds) -> bool:
        return (len(feeds) <= self.max_batch and all(f.mask is None for f in feeds)
                and max(len(f.tokens) for f in feeds) <= self.max_q)

    def fits_loop(self, catch_up, steps: int) -> bool:
        """A draft loop of ``steps`` steps whose catch-up feeds are short enough runs as one graph."""
        return self.head == 0 and steps <= self.max_q and self.fits(catch_up)

    def kv_bucket(self, n: int) -> int:
        return kv_bucket(n, self.r.blocks.block_size, self.max_kv)

    # --- host side --------------------------------------------------------------------------
    def _layout(self, feeds, Bb: int, Q: int, NB: int):
        """Host arrays of one padded forward: ids, pos, qpos, slots [Bb, Q], tables [Bb, NB], and the
        rows (b * Q + i) whose logits the feeds ask for. Whole-batch numpy operations over flat lists:
        one Python pass over the feeds (block tables grown, lengths read), no numpy call per row (at batch
        256 the per-row version cost ~2 ms of host time a step)."""
        r, blocks = self.r, self.r.blocks
        bs = blocks.block_size
        ids = np.zeros((Bb, Q), dtype=np.int64)
        pos = np.zeros((Bb, Q), dtype=np.int64)
        qpos = np.zeros((Bb, Q), dtype=np.int64)
        slots = np.full((Bb, Q), blocks.sentinel_slot, dtype=np.int64)
        tables = np.full((Bb, NB), blocks.num_blocks, dtype=np.int64)         # sentinel block
        B = len(feeds)
        lens = np.fromiter((len(f.tokens) for f in feeds), dtype=np.int64, count=B)
        starts = np.fromiter((f.start for f in feeds), dtype=np.int64, count=B)
        real = np.fromiter((not f.dummy for f in feeds), dtype=bool, count=B)
        rows = []
        for b, f in enumerate(feeds):
            n = len(f.tokens)
            rows.extend(range(b * Q + n - f.num_logits, b * Q + n))
        if not real.any():
            return ids, pos, qpos, slots, tables, rows
        ends = starts + lens
        over = real & (ends > r.max_model_len)
        if over.any():
            b = int(np.argmax(over))
            raise ValueError(f"sequence {feeds[b].seq_id}: {int(ends[b])} tokens exceed max_model_len={r.max_model_len}")
        live = [f for f in feeds if not f.dummy]
        rb = np.flatnonzero(real)                                              # the real rows' indices
        tabs = [blocks.ensure(f.seq_id, f.start + len(f.tokens)) for f in live]
        width = np.fromiter((min(len(t), NB) for t in tabs), dtype=np.int64, count=len(tabs))
        tmask = np.arange(NB) < width[:, None]                                 # [R, NB] the real table entries
        sub = np.full((len(rb), NB), blocks.num_blocks, dtype=np.int64)
        sub[tmask] = np.fromiter(itertools.chain.from_iterable(t[:NB] for t in tabs), dtype=np.int64,
                                 count=int(width.sum()))
        tables[rb] = sub
        qmask = np.arange(Q) < lens[rb, None]                                  # [R, Q] the real queries
        total = int(lens[rb].sum())
        real_ids = np.zeros((len(rb), Q), dtype=np.int64)
        real_ids[qmask] = np.fromiter(itertools.chain.from_iterable(f.tokens for f in live), dtype=np.int64,
                                      count=total)
        ids[rb] = real_ids
        qpos[rb] = np.where(qmask, starts[rb, None] + np.arange(Q), 0)         # storage positions
        pos[rb] = qpos[rb]
        # slot of query i: its row's block table (whole, not cut to NB) at position // bs, flattened per row
        full = np.fromiter(itertools.chain.from_iterable(tabs), dtype=np.int64, count=sum(len(t) for t in tabs))
        first = np.cumsum([0] + [len(t) for t in tabs[:-1]])                    # [R] each row's first block in full
        p = qpos[rb]
        blk = full[np.where(qmask, first[:, None] + p // bs, 0)]
        slots[rb] = np.where(qmask, blk * bs + p % bs, blocks.sentinel_slot)
        for i, f in enumerate(live):                                           # RoPE positions given apart (rare)
            if f.positions is not None:
                pos[rb[i], : len(f.tokens)] = f.positions
        return ids, pos, qpos, slots, tables, rows

    def _stage(self, host: np.ndarray) -> None:
        """Copy ``host`` into the start of the static message with one asynchronous H2D copy."""
        self._ring.copy_to(self.msg, host)

    # --- one forward ------------------------------------------------------------------------
    def forward(self, feeds, device_tokens=None, epilogue=None, hidden: bool = False, shift=None):
        """Logits [rows the feeds ask for, V]; with ``epilogue`` (engine/verify_step.py), its output
        over the padded logits [Bb, Q, V] instead, computed inside the same graph. ``hidden``: also
        the final hidden states, one [len(f.tokens), H] per feed (copied out of the graph's output).
        ``shift`` (with an epilogue: an overlapped verify): (device [B] int64, its largest possible value):
        each row's positions move by its device value (:meth:`_set_shift`); the caller has grown the block
        tables to cover it."""
        if shift is not None and (epilogue is None or hidden or self.head):
            raise ValueError("shift: only for a verify with an epilogue, without hidden states or tensor parallelism")
        if hidden:
            return self._forward_hidden(feeds, device_tokens, epilogue)
        r = self.r
        bs = r.blocks.block_size
        B, Q = len(feeds), self._queries(feeds)
        Bb = next(b for b in self.buckets if b >= B)
        KV = self.kv_bucket(max(f.start + len(f.tokens) for f in feeds) + (shift[1] if shift else 0))
        NB = KV // bs
        ids, pos, qpos, slots, tables, rows = self._layout(feeds, Bb, Q, NB)
        m = Bb * Q
        parts = [ids.ravel(), pos.ravel(), qpos.ravel(), slots.ravel(), tables.ravel()]
        if epilogue is not None:
            ints = np.zeros(Bb, dtype=np.int64)
            ints[:B] = epilogue.row_ints
            parts.append(ints)
        host = np.concatenate(parts)
        if self.head:
            host = np.concatenate([tp_step.encode_header(tp_step.Padded(Bb, Q, KV, r.attn_backend)), host])
        self._stage(host)
        if device_tokens is not None:         # tokens sampled on the device: no host round trip
            dt, col0 = device_tokens
            self.buf[:m].view(Bb, Q)[:B, col0:col0 + dt.shape[1]].copy_(dt[:, : Q - col0])
        if shift is not None:
            self._set_shift(shift[0], Bb)
        if self.head:
            r.tp.broadcast()                  # the workers run the same shape from the same buffer
        if epilogue is not None:
            key = (Bb, Q, KV, epilogue.name) + (("shift",) if shift else ())
            return self._replay(key, lambda: self._run_epilogue(Bb, Q, KV, epilogue, shift is not None))[:B]
        out = self.execute((Bb, Q, KV))
        if rows == list(range(len(rows))):             # e.g. decode: the first B rows, no gather
            return out[: len(rows)]
        idx = upload(rows, r.device, torch.long)
        return out[idx]

    def _queries(self, feeds) -> int:
        """Queries per row of a forward. One that asks for no logits only writes K/V (a draft catching up on the
        plain steps before its round, draft/loop.shorten_catch_up; a short prompt's draft prefill): its length is
        that of the stretch before it, so it runs at max_q, one graph per batch and context bucket, which
        :meth:`warm_kv_writes` can run before they are met."""
        if not any(f.num_logits for f in feeds):
            return self.max_q
        return max(len(f.tokens) for f in feeds)

    def warm_kv_writes(self, batch: int, context: int) -> None:
        """Run (on CUDA: capture) the K/V-only forward of every batch bucket up to ``batch``'s and every context
        bucket up to ``context``'s, on placeholder rows: where and when a draft catches up after plain steps
        depends on k_policy=auto's choices, so no run of real requests is sure to meet them all first."""
        top = next(b for b in self.buckets if b >= batch)
        for Bb in (b for b in self.buckets if b <= top):
            for kv in kv_buckets(context, self.r.blocks.block_size, self.max_kv):
                self.r.forward([Feed(0, [0] * self.max_q, kv - self.max_q, num_logits=0, dummy=True)] * Bb)

    def _forward_hidden(self, feeds, device_tokens, epilogue):
        """forward() that also returns the hidden states (the EAGLE drafter's hook): the graph of key
        (Bb, Q, KV, epilogue name or None, "hidden") outputs (logits or epilogue output, hidden [Bb * Q, H])."""
        r = self.r
        B, Q = len(feeds), max(len(f.tokens) for f in feeds)
        Bb = next(b for b in self.buckets if b >= B)
        KV = self.kv_bucket(max(f.start + len(f.tokens) for f in feeds))
        ids, pos, qpos, slots, tables, rows = self._layout(feeds, Bb, Q, KV // r.blocks.block_size)
        parts = [ids.ravel(), pos.ravel(), qpos.ravel(), slots.ravel(), tables.ravel()]
        if epilogue is not None:
            ints = np.zeros(Bb, dtype=np.int64)
            ints[:B] = epilogue.row_ints
            parts.append(ints)
        self._stage(np.concatenate(parts))
        if device_tokens is not None:
            dt, col0 = device_tokens
            self.buf[:Bb * Q].view(Bb, Q)[:B, col0:col0 + dt.shape[1]].copy_(dt[:, : Q - col0])
        name = None if epilogue is None else epilogue.name
        out, h = self._replay((Bb, Q, KV, name, "hidden"), lambda: self._run_hidden(Bb, Q, KV, epilogue))
        h = h.view(Bb, Q, -1)[:B].clone()              # the graph's buffer is rewritten by the next replay
        hs = [h[b, : len(f.tokens)] for b, f in enumerate(feeds)]
        if epilogue is not None:
            return out[:B], hs
        if rows == list(range(len(rows))):
            return out[: len(rows)], hs
        return out[upload(rows, r.device, torch.long)], hs

    def _run_hidden(self, Bb: int, Q: int, KV: int, epilogue):
        ids, pos, qpos, tables, slots = self._views(Bb, Q, KV)
        r = self.r
        logits, h = r.model.forward_padded(ids, pos, qpos, tables, slots, r.kv_caches, KV, r.attn_backend,
                                           return_hidden=True)
        if epilogue is None:
            return logits, h
        m, NB = Bb * Q, KV // r.blocks.block_size
        ints = self.buf[4 * m + Bb * NB: 4 * m + Bb * NB + Bb]
        return epilogue(logits.view(Bb, Q, -1), self.buf[:m].view(Bb, Q), ints), h

    def execute(self, key: tuple[int, int, int]) -> torch.Tensor:
        """The padded forward of shape key = (batch bucket, queries, KV bucket) over the buffer as it
        stands: replayed (captured the first time) or, without capture, run eagerly."""
        return self._replay(key, lambda: self._run(*key))

    def _views(self, Bb: int, Q: int, KV: int):
        m, NB = Bb * Q, KV // self.r.blocks.block_size
        b = self.buf
        return (b[:m], b[m:2 * m], b[2 * m:3 * m].view(Bb, Q), b[4 * m:4 * m + Bb * NB].view(Bb, NB), b[3 * m:4 * m])

    # --- positions that move on the device (engine/spec_overlap.py) ------------------------------
    def _set_shift(self, shift: torch.Tensor, Bb: int) -> None:
        """Load [B] per-row position shifts (device int64) into the static shift buffer; padded rows get 0."""
        B = shift.shape[0]
        self.shift[:B].copy_(shift)
        if Bb > B:
            self.shift[B:Bb].zero_()

    def _shifted(self, qpos: torch.Tensor, slots: torch.Tensor, tables: torch.Tensor):
        """Storage positions [Bb, Q] moved by each row's shift, and their slots looked up in the block tables
        on the device; queries whose host slot is the sentinel (padding) keep it."""
        Bb, bs = qpos.shape[0], self.r.blocks.block_size
        p = qpos + self.shift[:Bb, None]
        blk = tables.gather(1, torch.div(p, bs, rounding_mode="floor").clamp(max=tables.shape[1] - 1))
        return p, torch.where(slots == self.r.blocks.sentinel_slot, slots, blk * bs + p % bs)

    def _run(self, Bb: int, Q: int, KV: int, shifted: bool = False) -> torch.Tensor:
        ids, pos, qpos, tables, slots = self._views(Bb, Q, KV)
        if shifted:
            qpos, slots = self._shifted(qpos, slots.view(Bb, Q), tables)
            pos, slots = qpos.reshape(-1), slots.reshape(-1)
        return self.r.model.forward_padded(ids, pos, qpos, tables, slots, self.r.kv_caches, KV, self.r.attn_backend)

    def _run_epilogue(self, Bb: int, Q: int, KV: int, epilogue, shifted: bool = False) -> torch.Tensor:
        m, NB = Bb * Q, KV // self.r.blocks.block_size
        ints = self.buf[4 * m + Bb * NB: 4 * m + Bb * NB + Bb]
        logits = self._run(Bb, Q, KV, shifted)
        return epilogue(logits.view(Bb, Q, -1), self.buf[:m].view(Bb, Q), ints)

    # --- the draft loop ---------------------------------------------------------------------
    @torch.inference_mode()
    def loop(self, catch_up, ends: list[int], ks: list[int], sampler, vocab_size: int, device_tokens=None,
             shift=None):
        """draft/loop.draft_loop as one graph: tokens [B, K], q [B, K, V] (None when greedy), tops [B, K, W].
        ``device_tokens`` [B, n]: the first n step-0 tokens of each row, on the device; ``shift``: as in
        :meth:`forward` (every position of a row, step 0's and the later steps', moves by its value)."""
        blocks = self.r.blocks
        bs = blocks.block_size
        B, K = len(catch_up), max(ks)
        extra = shift[1] if shift else 0
        Q0 = max(LOOP_QUERIES, max(len(f.tokens) for f in catch_up))
        Bb = next(b for b in self.buckets if b >= B)
        for b, f in enumerate(catch_up):      # room for every step's K/V before the layout reads tables
            if not f.dummy and (ks[b] > 1 or extra):
                blocks.ensure(f.seq_id, ends[b] - 1 + ks[b] + extra)
        KV = self.kv_bucket(max(max(f.start + len(f.tokens), e - 1 + K) for f, e in zip(catch_up, ends)) + extra)
        NB = KV // bs
        ids, pos, _, slots, tables, rows = self._layout(catch_up, Bb, Q0, NB)
        last = np.zeros(Bb, dtype=np.int64)
        last[:B] = rows                       # the catch-up's last query of each row (one logit row each)
        later_pos = np.zeros((K - 1, Bb), dtype=np.int64)
        later_slots = np.full((K - 1, Bb), blocks.sentinel_slot, dtype=np.int64)
        for b, f in enumerate(catch_up):
            if f.dummy:
                continue
            table = blocks.tables[f.seq_id]
            for i in range(1, ks[b]):
                p = ends[b] - 1 + i
                later_pos[i - 1, b] = p
                later_slots[i - 1, b] = table[p // bs] * bs + p % bs
        self._stage(np.concatenate([ids.ravel(), pos.ravel(), slots.ravel(), last, later_pos.ravel(),
                                    later_slots.ravel(), tables.ravel()]))
        if device_tokens is not None:
            self.buf[:Bb * Q0].view(Bb, Q0)[:B, :device_tokens.shape[1]].copy_(device_tokens)
        if shift is not None:
            self._set_shift(shift[0], Bb)
        key = ("loop", Bb, Q0, K, KV, vocab_size, sampler.key()) + (("shift",) if shift else ())
        inputs = [pad_rows(t, Bb) for t in sampler.tensors()]            # per-row sampling tensors [Bb, ...]
        tokens, probs, tops = self._replay(
            key, lambda s: self._run_loop(Bb, Q0, K, KV, vocab_size, s, shift is not None), inputs, sampler)
        self.loops += 1
        return tokens[:B], (None if probs is None else probs[:B]), (None if tops is None else tops[:B])

    def _run_loop(self, Bb: int, Q0: int, K: int, KV: int, vocab_size: int, sampler, shifted: bool = False):
        from ..layers.sampling import fit_vocab
        m, NB = Bb * Q0, KV // self.r.blocks.block_size
        b = self.buf
        ids0, pos0, slots0 = b[:m], b[m:2 * m], b[2 * m:3 * m]
        o = 3 * m
        last = b[o:o + Bb]
        later_pos = b[o + Bb: o + Bb + (K - 1) * Bb].view(max(K - 1, 0), Bb)
        later_slots = b[o + Bb + (K - 1) * Bb: o + Bb + 2 * (K - 1) * Bb].view(max(K - 1, 0), Bb)
        o += Bb + 2 * (K - 1) * Bb
        tables = b[o:o + Bb * NB].view(Bb, NB)
        model, kv, backend = self.r.model, self.r.kv_caches, self.r.attn_backend
        qpos0 = pos0.view(Bb, Q0)
        if shifted:
            qpos0, slots0 = self._shifted(qpos0, slots0.view(Bb, Q0), tables)
            pos0, slots0 = qpos0.reshape(-1), slots0.reshape(-1)
        logits = model.forward_padded(ids0, pos0, qpos0, tables, slots0, kv, KV, backend)[last]
        toks, qs, tops = [], [], []
        for i in range(K):
            if i > 0:
                p, sl = later_pos[i - 1].view(Bb, 1), later_slots[i - 1].view(Bb, 1)
                if shifted:
                    p, sl = self._shifted(p, sl, tables)
                logits = model.forward_padded(toks[-1], p.reshape(-1), p, tables, sl.reshape(-1), kv, KV, backend)
            logits = fit_vocab(logits, vocab_size)
            tok, q = sampler.sample(logits, i)
            toks.append(tok)
            qs.append(q)
            tops.append(sampler.tops(logits))
        tokens = torch.stack(toks, dim=1)                                   # [Bb, K]
        probs = None if qs[0] is None else torch.stack(qs, dim=1)           # [Bb, K, V]
        return tokens, probs, (None if tops[0] is None else torch.stack(tops, dim=1))   # [Bb, K, W]

    # --- capture and replay -----------------------------------------------------------------
    def _replay(self, key, program, inputs: list[torch.Tensor] | None = None, sampler=None):
        """Run ``program`` for ``key``: eagerly without capture, else replay its graph (captured the first
        time). A loop's ``sampler`` reads its per-row ``inputs`` from the graph's static copies of them."""
        if not self.capture:
            if key not in self.padded_keys:  # where a GPU would capture: counted, so the CPU shows it too
                self.padded_keys.add(key)
                count_capture()
                log.info("%s: padded graph %s run first (a GPU captures here)", self.r.name, key)
            out = program(sampler.bind(inputs)) if sampler is not None else program()
            return self._as_static(key, out)
        if key not in self.graphs:
            static = [t.clone() for t in inputs] if sampler is not None else []
            self._capture(key, (lambda: program(sampler.bind(static))) if sampler is not None else program, static)
        graph, out, static = self.graphs[key]
        for dst, src in zip(static, inputs or ()):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        self.replays += 1
        return out

    def _as_static(self, key, out):
        """Without capture, the output written into one buffer per key, as a replayed graph writes its static
        output: a caller that keeps an output past the next run of the same key sees it change on the CPU too."""
        keep = self.padded_out.get(key)
        if keep is None:
            self.padded_out[key] = out
            return out
        if isinstance(out, torch.Tensor):
            return keep.copy_(out)
        return type(out)(k.copy_(o) if o is not None else None for k, o in zip(keep, out))

    def _capture(self, key, program, static) -> None:
        graph, out = capture(program, self.r.device, self.pool, thread_local=bool(self.head))
        self.pool = graph.pool()
        self.graphs[key] = (graph, out, static)
        log.info("%s: captured CUDA graph %s (%d graphs)", self.r.name, key, len(self.graphs))
