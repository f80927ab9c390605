"""Building the next speculation cache (draft side), after the reply, while the target verifies.

:class:`TreeBuilder` takes the *glue* logits (one row per depth j: the draft's distribution after
[.., t*, d1..dj]; after PREFILL, the last prompt token's), forks the top-F_j candidates per depth on
the device (the drafted token excluded), makes every branch a copy-on-write child sequence of its
sequence (runner/block_manager.py: full blocks shared, the partial block copied in one device copy),
runs the K tree steps as plain decode steps over all branches of all sequences (tree_steps.py: one
CUDA graph for greedy builds) and frees the children at once. Nothing waits for the device:
:meth:`launch` queues the work and one non-blocking copy of the roots and tokens to the host;
:meth:`complete` waits for that copy (the build's one host sync) and fills the speculation cache.
spec/tree.py has the layout.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..runner.block_manager import copy_blocks
from ..spec.adaptive import RANK_WINDOW
from ..spec.spec_cache import CacheEntry, SpeculationCache
from ..spec.tree import branch_positions, fork_layout, ranked_candidates
from ..transfer import upload
from .tree_steps import TreeSteps

_child_ids = itertools.count(1)


def _child_id() -> int:
    """Branch sequences live in the draft runner's block manager next to the real ones (ids >= 0)."""
    return -next(_child_ids)


@dataclass(slots=True)
class TreeRow:
    """One sequence's part of a build: its glue rows and what each depth forks."""

    seq_id: int
    built_len: int            # committed tokens (t* included) when built: the round it answers
    first_glue_row: int       # its first row in the glue logits
    fan_out: list[int]        # F_j per glue row j
    keys_k: list[int]         # the outcome k each glue row answers (j, or -2 after PREFILL)
    fork_base: int            # tokens a depth-0 branch shares with the sequence (depth j: + j)
    steps: int                # draft tokens each branch speculates
    sampled: bool             # temperature > 0: q is kept per branch


@dataclass
class PendingBuild:
    rows: list[TreeRow]
    spans: list[tuple[int, int]]          # branch range of each row in the build
    depths: np.ndarray                    # [N] depth of each branch
    roots: torch.Tensor                   # [N] on the draft device
    host: torch.Tensor                    # [N, 1 + S] (roots | tokens) on the host, filled by the copy
    ranked: torch.Tensor | None           # [G, width] on the host (geometric fan-out only)
    probs: torch.Tensor | None            # [N, S, V] q per branch (sampled rows only; on the device)
    done: object                          # CUDA event after the copies (None on CPU)
    start: object
    t0: float
    forked: object                        # CUDA event after the roots (None on CPU)
    seconds: float = 0.0


class TreeBuilder:
    def __init__(self, runner, device: torch.device, vocab_size: int, cache: SpeculationCache, max_rows: int,
                 max_steps: int, capture: bool, geometric: bool):
        self.runner, self.device, self.vocab = runner, torch.device(device), vocab_size
        self.cache, self.geometric = cache, geometric
        self.steps = TreeSteps(runner, vocab_size, max_rows, max_steps, capture)
        self.pending: PendingBuild | None = None
        self.last_s = 0.0              # how long the last completed build took (device time on CUDA)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def room(self, rows: list[TreeRow]) -> list[TreeRow]:
        """The rows (in order) whose branches fit the free pool: each branch needs its copied partial
        block plus the blocks its ``steps`` tokens reach."""
        blocks = self.runner.blocks
        bs, free, out = blocks.block_size, blocks.num_free, []
        S = max((r.steps for r in rows), default=0)              # every branch runs the build's S steps
        for r in rows:
            need = 0
            for j, f in enumerate(r.fan_out):
                n = r.fork_base + j
                need += f * (blocks.blocks_for(n + S) - n // bs)
            if need <= free:
                free -= need
                out.append(r)
        return out

    @torch.inference_mode()
    def launch(self, rows: list[TreeRow], glue_logits: torch.Tensor, exclude: list[int],
               sample=None) -> None:
        """Queue a build: glue_logits [G, V] (rows' glue rows), exclude [G] the drafted token per glue row
        (-1 = none); sample(logits [N, V], step, branch_rows) for sampled builds (None: all greedy).
        Rows must already fit (:meth:`room`)."""
        self.complete()                                   # one build at a time
        rows = [r for r in rows if r.steps > 0 and sum(r.fan_out) > 0]
        if not rows:
            return
        start = None
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        width = max(max(r.fan_out) for r in rows)
        if self.geometric:
            width = max(width, RANK_WINDOW)
        ex = upload(exclude, self.device, torch.long)
        ranked = ranked_candidates(glue_logits, ex, width)                         # [G, width]
        depths, flat, fork_len, spans, off = [], [], [], [], 0
        for r in rows:
            d, idx = fork_layout(r.fan_out, r.first_glue_row, ranked.shape[1])
            depths.append(d)
            flat.append(idx)
            fork_len.append(r.fork_base + d)
            spans.append((off, off + len(d)))
            off += len(d)
        depths, flat, fork_len = np.concatenate(depths), np.concatenate(flat), np.concatenate(fork_len)
        N, S = len(depths), max(r.steps for r in rows)
        roots = ranked.reshape(-1)[upload(flat, self.device)]    # [N]
        forked = None
        if self.cuda:                            # the SIMULATED verifier may read the roots from here on
            forked = torch.cuda.Event()
            forked.record()
        # copy-on-write children, one per branch; their tables stay fixed for the whole build
        blocks = self.runner.blocks
        children, copies = [], []                 # children: (parent, child ids, their fork lengths)
        tables = np.full((N, blocks.blocks_for(int(fork_len.max()) + S)), blocks.num_blocks, dtype=np.int64)
        for r, (a, b) in zip(rows, spans):
            ids = [_child_id() for _ in range(a, b)]
            _, cp = blocks.fork_many(r.seq_id, ids, fork_len[a:b].tolist(), reserve=S, out=tables[a:b])
            children.append((r.seq_id, ids, fork_len[a:b].tolist()))
            copies += cp
        copy_blocks(self.runner.kv, copies)
        pos = branch_positions(fork_len, S)
        branch_rows = np.repeat(np.arange(len(rows)), [b - a for a, b in spans])
        sampler = None if sample is None else (lambda logits, s: sample(logits, s, branch_rows))
        tokens, probs = self.steps.run(roots, pos, tables, sampler)
        for parent, ids, lens in children:      # stream-ordered: the next user of these blocks runs after
            blocks.unfork(parent, ids, lens)
        out = torch.cat([roots[:, None], tokens], 1)                                  # [N, 1 + S]
        host = torch.empty(out.shape, dtype=torch.long, pin_memory=self.cuda)
        host.copy_(out, non_blocking=True)
        ranked_host = None
        if self.geometric:
            ranked_host = torch.empty(ranked.shape, dtype=torch.long, pin_memory=self.cuda)
            ranked_host.copy_(ranked, non_blocking=True)
        done = None
        if self.cuda:
            done = torch.cuda.Event(enable_timing=True)
            done.record()
        self.pending = PendingBuild(rows, spans, depths, roots, host, ranked_host, probs, done, start, t0, forked)

    def complete(self, seqs: dict | None = None) -> float | None:
        """Wait for the pending build (its one host sync) and put its trees into the cache. ``seqs``
        (seq_id -> DraftSeq): rows whose sequence is gone are dropped, and with geometric fan-out each
        sequence's ``ranked`` candidates are set (for the power-law fit). Returns the build's seconds,
        or None when nothing was pending."""
        p, self.pending = self.pending, None
        if p is None:
            return None
        if p.done is not None:
            p.done.synchronize()                         # host sync: the build's roots and tokens
            p.seconds = p.start.elapsed_time(p.done) / 1e3
        else:
            p.seconds = time.perf_counter() - p.t0
        host = p.host.numpy()
        ranked = None if p.ranked is None else p.ranked.numpy()
        for r, (a, b) in zip(p.rows, p.spans):
            if seqs is not None and r.seq_id not in seqs:
                continue
            keys = np.stack([np.asarray(r.keys_k, dtype=np.int64)[p.depths[a:b]], host[a:b, 0]], axis=1)
            probs = None if p.probs is None or not r.sampled else p.probs[a:b, : r.steps]
            self.cache.put(r.seq_id, CacheEntry(keys, host[a:b, 1: 1 + r.steps].copy(), probs, r.built_len))
            if ranked is not None and seqs is not None:
                seqs[r.seq_id].ranked = ranked[r.first_glue_row: r.first_glue_row + len(r.fan_out)].tolist()
        self.last_s = p.seconds
        return p.seconds

    def candidates(self, seq_id: int, depth: int) -> tuple[torch.Tensor, int, int, object] | None:
        """The pending build's forked roots at ``depth`` for one sequence, for the SIMULATED verifier:
        (roots [N] on the device, first branch index, count, CUDA event after which the roots are
        valid or None), or None when the sequence has no branch at that depth."""
        p = self.pending
        if p is None:
            return None
        for r, (a, b) in zip(p.rows, p.spans):
            if r.seq_id == seq_id:
                sel = np.nonzero(p.depths[a:b] == depth)[0]
                if len(sel) == 0:
                    return None
                return p.roots, a + int(sel[0]), len(sel), p.forked
        return None
