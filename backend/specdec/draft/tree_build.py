"""Building the next speculation cache (draft side), after the reply, while the target verifies.

For every row of the last request: one *glue* forward over [t*, d1..dK] at the true positions
(it also fixes the draft's K/V for whatever the target accepts), the *fork* (top-F_j
candidates per depth, the drafted token excluded), then K batched *tree-decode* forwards over
all branches of all rows, each branch an independent chain (tree.py has the layout). After
PREFILL the same tree hangs off the last prompt token, keyed with k = -2. The results go to
the speculation cache (spec_cache.py); the tree's K/V blocks are released right after.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..runner.feed import Feed
from ..spec.adaptive import RANK_WINDOW
from ..spec.fanout import saguaro_top
from .messages import Prefill, RowStatus
from ..spec.spec_cache import CacheEntry
from ..spec.tree import fork, ranked_candidates, tree_mask, tree_positions, tree_slots


@dataclass(slots=True)
class TreeJob:
    """One sequence's tree: branches (depth, root) hanging off glue stored from glue_start."""

    seq_id: int
    glue_start: int
    base: int
    depths: list[int]
    roots: list[int]
    keys_k: list[int]          # the outcome k each branch answers (its depth, or -2 after PREFILL)
    steps: int
    built_len: int


class CacheBuilder:
    """The cache-building half of :class:`~specdec.draft.core.DraftCore` (which provides seqs,
    cfg, adaptive, cache, runner, _forward, _sample, _fits and the pending rows)."""

    def _prefill_trees(self, msg: Prefill, tree_rows: list[int], logits: torch.Tensor) -> None:
        """First trees after PREFILL: roots = the top-budget tokens after the last prompt token."""
        if not tree_rows:
            return
        budget = sum(self.cfg.fan_out_hit)
        width = max(budget, RANK_WINDOW if self.cfg.geometric else 0)
        none = torch.full((len(tree_rows),), -1, dtype=torch.int64, device=logits.device)
        ranked = ranked_candidates(logits, none, width).tolist()            # host sync: roots feed the tree
        jobs = []
        for r, i in enumerate(tree_rows):
            sid, P = msg.seq_ids[i], len(msg.tokens[i])
            roots = ranked[r][:budget]
            if self.cfg.geometric:
                self.seqs[sid].ranked = [ranked[r]]
            jobs.append(TreeJob(sid, P - 1, P, [0] * len(roots), roots, [-2] * len(roots), msg.k[i], P))
        self._decode_tree(jobs)

    def build(self) -> None:
        """Glue decode, fork and tree decode for the rows of the last request (async mode)."""
        jobs, self._pending = self._pending, []
        if not jobs:
            return
        t0 = time.perf_counter()
        jobs = [(sid, d, st) for sid, d, st in jobs if sid in self.seqs]
        fits = self._fits({sid: len(self.seqs[sid].tokens) + len(d) for sid, d, _ in jobs})
        jobs = [j for j in jobs if j[0] in fits]
        feeds = []
        for sid, d, _ in jobs:
            s = self.seqs[sid]
            start = min(s.kv_valid, len(s.tokens) - 1)
            feeds.append(Feed(sid, s.tokens[start:] + d, start, num_logits=len(d) + 1))
        if not feeds:
            return
        logits = self._forward(feeds)                                            # [sum(k_b + 1), V]
        K = self.cfg.k
        fans, exclude = [], []
        for sid, d, st in jobs:
            lst = self.adaptive.fan_out(st)
            fans.append(lst[: len(d)] + [lst[K]])        # a shorter row: its all-accepted bucket is lst[K]
            exclude += d + [-1]
        width = max(max(max(f) for f in fans), RANK_WINDOW if self.cfg.geometric else 0)
        ranked = ranked_candidates(logits, torch.tensor(exclude, device=logits.device), width).tolist()  # host sync
        trees, row = [], 0
        for (sid, d, _), fan in zip(jobs, fans):
            s, L = self.seqs[sid], len(self.seqs[sid].tokens)
            s.kv_valid, s.spec = L, list(d)
            rows = ranked[row: row + len(d) + 1]
            row += len(d) + 1
            if self.cfg.geometric:
                s.ranked = rows
            depths, roots = fork(rows, fan)
            trees.append(TreeJob(sid, L - 1, L + len(d), depths, roots, depths, len(d), L))
        self._decode_tree(trees)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)          # host sync: time the whole build (off the critical path)
        self.last_build_s = time.perf_counter() - t0
        self.adaptive.build_s.add(self.last_build_s)
        self.build_time += self.last_build_s
        self.builds += 1

    def _decode_tree(self, jobs: list[TreeJob]) -> None:
        """K batched forwards over every branch of every job; fills the speculation cache."""
        fits = self._fits({j.seq_id: j.base + j.steps * len(j.roots) for j in jobs})
        jobs = [j for j in jobs if j.seq_id in fits and j.roots and j.steps > 0]
        top = saguaro_top(self.adaptive.fan_out(RowStatus.HIT))
        V = self.cfg.vocab_size
        masks = [tree_mask(j.glue_start, j.depths, j.base, j.steps) for j in jobs]
        cur = [list(j.roots) for j in jobs]
        toks = [np.zeros((len(j.roots), j.steps), dtype=np.int64) for j in jobs]
        sampled = [self.seqs[j.seq_id].temperature > 0 for j in jobs]
        probs = [torch.zeros((len(j.roots), j.steps, V), device=self.device) if s else None
                 for j, s in zip(jobs, sampled)]
        for step in range(max((j.steps for j in jobs), default=0)):
            act = [i for i, j in enumerate(jobs) if j.steps > step]
            feeds, rows = [], []
            for i in act:
                j, n = jobs[i], len(jobs[i].roots)
                start = tree_slots(j.base, n, step)
                feeds.append(Feed(j.seq_id, cur[i], start, num_logits=n,
                                  positions=tree_positions(j.glue_start, j.depths, step),
                                  mask=masks[i][:, : start + n]))
                rows += [self.seqs[j.seq_id]] * n
            tok, q = self._sample(self._forward(feeds), rows, [top[min(step, len(top) - 1)]] * len(rows))
            tok_host = tok.tolist()                                   # host sync: the next step's feed
            off = 0
            for i in act:
                n = len(jobs[i].roots)
                cur[i] = tok_host[off: off + n]
                toks[i][:, step] = cur[i]
                if probs[i] is not None:
                    probs[i][:, step] = q[off: off + n]
                off += n
        for i, j in enumerate(jobs):
            keys = np.stack([np.asarray(j.keys_k), np.asarray(j.roots)], axis=1).astype(np.int64)
            self.cache.put(j.seq_id, CacheEntry(keys, toks[i], probs[i], j.built_len))
            self.runner.truncate(j.seq_id, j.base)        # drop the tree's K/V blocks, keep prefix + glue

