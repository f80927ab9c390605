"""Prompt-lookup drafting: propose the continuation of the most recent earlier occurrence of the
sequence's last n tokens (n from ``n_max`` down to ``n_min``). Deterministic, so q is one-hot."""
from __future__ import annotations

import numpy as np
import torch

from ..layers.sampling import SamplingRows
from .base import Drafter, Proposal


class NgramDrafter(Drafter):
    def __init__(self, n_max: int = 4, n_min: int = 1):
        self.n_max, self.n_min = n_max, n_min

    def lookup(self, tokens: list[int], k: int) -> list[int]:
        arr = np.asarray(tokens, dtype=np.int64)
        L = len(arr)
        for n in range(min(self.n_max, L - 1), self.n_min - 1, -1):
            pattern = arr[L - n:]
            windows = np.lib.stride_tricks.sliding_window_view(arr[: L - 1], n)   # starts 0..L-1-n
            hits = np.flatnonzero((windows == pattern).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n
                return arr[start: start + k].tolist()
        return []

    def propose(self, seqs, ks: list[int], sampling: SamplingRows) -> Proposal:
        B, K = len(seqs), max(ks)
        tokens = torch.zeros((B, K), dtype=torch.long)
        num = []
        for b, s in enumerate(seqs):
            cont = self.lookup(s.token_ids, ks[b]) if ks[b] else []
            tokens[b, : len(cont)] = torch.tensor(cont, dtype=torch.long)
            num.append(len(cont))
        return Proposal(tokens.to(sampling.device), None, num)
