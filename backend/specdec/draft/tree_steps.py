"""The K tree-decode steps of one cache build, as padded one-query decode steps over static buffers.

Every branch is a copy-on-write child sequence (spec/tree.py), so a tree step is a plain decode step:
row i feeds its current token at position ``positions[s, i]`` into slot ``slots[s, i]`` and attends
causally over its own block table. All steps of a build are laid out on the host at once (the
tables do not change during a build) and uploaded in ONE copy:

    buf = [block tables (rows x NB) | positions (steps x rows) | slots (steps x rows)]

Rows are padded to a bucket (padded rows write the sentinel slot and read the sentinel block), the
attention span to a KV bucket. Tokens never leave the device between steps:

* all-greedy builds on CUDA: the whole K-step loop (forward, argmax, next token) is ONE CUDA graph
  per (rows bucket, steps, KV bucket); a build is one upload, one replay;
* sampled rows (temperature > 0: per-row top-k/top-p, Saguaro): one graph per (rows bucket, KV
  bucket) for the forward, replayed per step, with the sampler run eagerly between replays;
* CPU or ``capture=False``: the same static-buffer forwards, run eagerly (how CPU tests check it).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from ..layers.sampling import fit_vocab
from ..runner.graph_tools import StagingRing, batch_buckets, capture, kv_bucket
from ..spec.tree import branch_slots

log = logging.getLogger(__name__)

# sample(logits [N, V], step) -> (tokens [N] int64, q [N, V] or None)
Sampler = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor | None]]


class TreeSteps:
    def __init__(self, runner, vocab_size: int, max_rows: int, max_steps: int, capture: bool):
        self.r, self.vocab = runner, vocab_size
        self.capture = capture and runner.device.type == "cuda"
        self.max_rows, self.max_steps = max_rows, max_steps
        self.buckets = batch_buckets(max_rows)
        bs = runner.blocks.block_size
        self.max_kv = -(-runner.max_model_len // bs) * bs
        self.max_blocks = self.max_kv // bs
        dev = runner.device
        n, S = max_rows, max_steps
        self.buf = torch.zeros(n * self.max_blocks + 2 * S * n, dtype=torch.long, device=dev)
        self.roots = torch.zeros(n, dtype=torch.long, device=dev)      # step 0's tokens (the fork's)
        self.ids = torch.zeros(n, dtype=torch.long, device=dev)        # the token each row feeds now
        self.cur_pos = torch.zeros(n, dtype=torch.long, device=dev)
        self.cur_slots = torch.full((n,), runner.blocks.sentinel_slot, dtype=torch.long, device=dev)
        self.tokens = torch.zeros((n, S), dtype=torch.long, device=dev)   # [rows, steps] the output
        self._ring = StagingRing(self.buf, depth=2)
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.replays = 0
        self.eager_runs = 0

    def kv_bucket(self, n: int) -> int:
        return kv_bucket(n, self.r.blocks.block_size, self.max_kv)

    def bucket(self, rows: int) -> int:
        return next(b for b in self.buckets if b >= rows)

    # --- one build ---------------------------------------------------------------------------
    def run(self, roots: torch.Tensor, positions: np.ndarray, tables: np.ndarray,
            sample: Sampler | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """roots [N] (device) step-0 tokens; positions [S, N] per step and row; tables [N, W] row i's
        block table (covering its positions; padding: any block id); sample None = greedy (argmax).
        Returns tokens [N, S] (a view of a static buffer: copy it before the next run) and q [N, S, V]
        (None when greedy)."""
        S, N = positions.shape
        if N > self.max_rows or S > self.max_steps or len(tables) != N or roots.shape != (N,):
            raise ValueError(f"tree of {N} rows x {S} steps exceeds {self.max_rows} x {self.max_steps} "
                             "or does not match its tables/roots")
        blocks = self.r.blocks
        bs = blocks.block_size
        Nb = self.bucket(N)
        KV = self.kv_bucket(int(positions[-1].max()) + 1)
        NB = KV // bs
        slots = branch_slots(tables, positions, bs)
        host_tables = np.full((Nb, NB), blocks.num_blocks, dtype=np.int64)
        w = min(tables.shape[1], NB)
        host_tables[:N, :w] = tables[:, :w]
        host_pos = np.zeros((S, Nb), dtype=np.int64)
        host_pos[:, :N] = positions
        host_slots = np.full((S, Nb), blocks.sentinel_slot, dtype=np.int64)
        host_slots[:, :N] = slots
        self._upload(np.concatenate([host_tables.ravel(), host_pos.ravel(), host_slots.ravel()]))
        self.roots[:N].copy_(roots)
        key = (Nb, S, KV)
        if sample is None and self.capture:
            self._replay(("tree",) + key)
            return self.tokens[:N, :S], None
        probs = None
        self.ids[:Nb].copy_(self.roots[:Nb])
        for s in range(S):
            self._place(Nb, S, NB, s)
            if self.capture:
                logits = self._replay(("step", Nb, S, KV))
            else:
                logits = self._forward(Nb, S, KV)
            if sample is None:
                tok, q = logits[:N].argmax(-1), None
            else:
                tok, q = sample(logits[:N], s)
            self.tokens[:N, s] = tok
            self.ids[:N] = tok
            if q is not None:
                if probs is None:
                    probs = torch.zeros((N, S, q.shape[-1]), dtype=q.dtype, device=q.device)
                probs[:, s] = q
        return self.tokens[:N, :S], probs

    def _upload(self, host: np.ndarray) -> None:
        self._ring.copy_to(self.buf, host)

    def _views(self, Nb: int, S: int, NB: int):
        b = self.buf
        t = Nb * NB
        return b[:t].view(Nb, NB), b[t: t + S * Nb].view(S, Nb), b[t + S * Nb: t + 2 * S * Nb].view(S, Nb)

    def _place(self, Nb: int, S: int, NB: int, s: int) -> None:
        _, pos, slots = self._views(Nb, S, NB)
        self.cur_pos[:Nb].copy_(pos[s])
        self.cur_slots[:Nb].copy_(slots[s])

    def _forward(self, Nb: int, S: int, KV: int) -> torch.Tensor:
        """One padded decode step over the rows' current tokens: logits [Nb, V] (target vocabulary)."""
        r = self.r
        tables, _, _ = self._views(Nb, S, KV // r.blocks.block_size)
        pos = self.cur_pos[:Nb]
        logits = r.model.forward_padded(self.ids[:Nb], pos, pos.view(Nb, 1), tables, self.cur_slots[:Nb],
                                        r.kv_caches, KV, r.attn_backend)
        return fit_vocab(logits, self.vocab)

    def _greedy_tree(self, Nb: int, S: int, KV: int) -> torch.Tensor:
        """The whole K-step loop on the device (what the "tree" graph captures)."""
        NB = KV // self.r.blocks.block_size
        self.ids[:Nb].copy_(self.roots[:Nb])
        for s in range(S):
            self._place(Nb, S, NB, s)
            tok = self._forward(Nb, S, KV).argmax(-1)
            self.tokens[:Nb, s].copy_(tok)
            self.ids[:Nb].copy_(tok)
        return self.tokens

    def _body(self, key):
        kind, Nb, S, KV = key
        return self._greedy_tree(Nb, S, KV) if kind == "tree" else self._forward(Nb, S, KV)

    def _replay(self, key) -> torch.Tensor:
        if key not in self.graphs:
            try:
                self._capture(key)
            except Exception:                     # never silently: logged, then this shape runs eagerly
                log.exception("%s: capturing the tree %s graph for %s failed; running it eagerly", self.r.name,
                              key[0], key[1:])
                self.graphs[key] = None
        entry = self.graphs[key]
        if entry is None:
            self.eager_runs += 1
            return self._body(key)
        graph, out = entry
        graph.replay()
        self.replays += 1
        return out

    def _capture(self, key) -> None:
        graph, out = capture(lambda: self._body(key), self.r.device, self.pool)
        self.pool = graph.pool()
        self.graphs[key] = (graph, out)
        log.info("%s: captured tree %s graph: %d rows x %d steps, KV span %d (%d graphs)", self.r.name, key[0],
                 key[1], key[2], key[3], len(self.graphs))
