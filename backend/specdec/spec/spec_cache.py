"""The speculation cache (draft side): the next speculation for every outcome the draft forked.

Key: (seq_id, k, t*) — k accepted draft tokens and the recovery/bonus token t* of the round
being verified (k = -2 for the tree built right after PREFILL, whose outcome is the target's
first sampled token). Value: K draft tokens and, for sampled sequences, the K distributions q
they were drawn from (the branch's own q, Saguaro-rescaled when on), which verification needs
to stay exact. Values are host token ids plus device probabilities.

An entry belongs to one round: built when the sequence had ``built_len`` committed tokens, it
answers only the request whose committed length is built_len + k + 1 (built_len + 1 for
k = -2). Anything else — a round skipped, a preemption, a stale tree — is a miss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def lookup(cand_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Exact-match lookup: cand_keys [B, N, 2] (k, t*) per row, padded with -1 rows that can't
    match (k >= -2 for real keys); query [B, 2]. Returns [B] int64: matching column, or -1."""
    cand_keys, query = np.asarray(cand_keys), np.asarray(query)
    if cand_keys.ndim != 3 or cand_keys.shape[-1] != 2 or query.shape != (cand_keys.shape[0], 2):
        raise ValueError(f"cand_keys must be [B, N, 2] and query [B, 2]; got {cand_keys.shape} and {query.shape}")
    if cand_keys.shape[1] == 0:
        return np.full(len(query), -1, dtype=np.int64)
    match = (cand_keys == query[:, None, :]).all(-1)                       # [B, N]
    return np.where(match.any(-1), match.argmax(-1), -1).astype(np.int64)


def expected_len(built_len: int, k: int) -> int:
    """Committed length of the request an entry built at ``built_len`` answers for outcome k."""
    return built_len + (k + 1 if k >= 0 else 1)


_PAD = -99                        # key padding: never equal to a real (k, t*)


@dataclass(slots=True)
class CacheEntry:
    keys: np.ndarray              # [N, 2] int64 (k, t*) per branch
    tokens: np.ndarray            # [N, K] int64, the next speculation per branch
    probs: torch.Tensor | None    # [N, K, V] float32 q per branch (None for greedy sequences)
    built_len: int


@dataclass(slots=True)
class Found:
    entry: CacheEntry
    index: int                    # branch


class SpeculationCache:
    def __init__(self):
        self.entries: dict[int, CacheEntry] = {}

    def put(self, seq_id: int, entry: CacheEntry) -> None:
        self.entries[seq_id] = entry

    def drop(self, seq_id: int) -> None:
        self.entries.pop(seq_id, None)

    def clear(self) -> None:
        self.entries.clear()

    def get(self, seq_ids: list[int], k_prev: list[int], recovery: list[int], num_tokens: list[int],
            k_want: list[int]) -> list[Found | None]:
        """One lookup per row; None = miss (no entry, wrong round, too short, or key not forked)."""
        B = len(seq_ids)
        rows = []
        for b in range(B):
            e = self.entries.get(seq_ids[b])
            ok = (e is not None and k_want[b] > 0 and e.tokens.shape[1] >= k_want[b]
                  and expected_len(e.built_len, k_prev[b]) == num_tokens[b])
            rows.append(e if ok else None)
        n = max((len(e.keys) for e in rows if e is not None), default=0)
        cand = np.full((B, n, 2), _PAD, dtype=np.int64)
        for b, e in enumerate(rows):
            if e is not None:
                cand[b, : len(e.keys)] = e.keys
        idx = lookup(cand, np.stack([np.asarray(k_prev), np.asarray(recovery)], axis=1).astype(np.int64)) \
            if B else np.zeros(0, np.int64)
        return [Found(rows[b], int(idx[b])) if rows[b] is not None and idx[b] >= 0 else None for b in range(B)]
