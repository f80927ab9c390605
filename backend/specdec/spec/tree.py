"""Layout of the speculation tree (draft side): forking and where each branch lives.

For one sequence with committed length L (t* at position L-1) and drafted d1..dK, the *glue*
[t*, d1..dK] sits at positions L-1 .. L-1+K; glue row j is the draft's distribution after
[.., t*, d1..dj]. Forking takes, at depth j, the top-F_j tokens of row j, excluding d_{j+1} for
j < K (a rejected token is never the recovery token: at temperature 0 it differs from the
argmax, above it its residual is 0). Branch i = (depth j_i, root c_i) stands for the outcome
"j_i accepted, recovery c_i".

Branches are copy-on-write forks of the sequence (runner/block_manager.py): branch i is a child
sequence holding the parent's first ``L + j_i`` tokens (prefix + glue[0..j_i]; full blocks shared,
the partial block copied), so plain causal attention sees exactly what the branch may see. Its
step-s token (s = 0: the root c_i) is stored at position ``L + j_i + s``, which is also its RoPE
position. A tree step is therefore one ordinary decode step over every branch of every sequence:
no custom masks. After PREFILL the same layout hangs off the last prompt token (L = prompt length,
every branch at depth 0).
"""
from __future__ import annotations

import numpy as np
import torch


def ranked_candidates(logits: torch.Tensor, exclude: torch.Tensor, width: int) -> torch.Tensor:
    """logits [G, V] (glue rows); exclude [G] token to drop per row (-1 = none) -> [G, width] token
    ids, best first (the fork at depth j takes the first F_j of row j). No host sync, and nothing
    vocabulary-wide beyond one top-(width + 1)."""
    if logits.dim() != 2 or exclude.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [G, V] and exclude [G]; got {tuple(logits.shape)}, {tuple(exclude.shape)}")
    V = logits.shape[1]
    width = min(width, V)
    top = logits.topk(min(width + 1, V), dim=-1, sorted=True).indices              # [G, width + 1]
    dropped = top == exclude[:, None]                                              # at most one per row
    order = (torch.arange(top.shape[1], device=top.device) + dropped * top.shape[1]).argsort(dim=-1)
    return top.gather(1, order[:, :width])


def fork(ranked: list[list[int]], fan_out: list[int]) -> tuple[list[int], list[int]]:
    """ranked[j] = depth j's candidates best first; fan_out[j] = F_j -> (depths, roots), depth-major."""
    if len(ranked) != len(fan_out):
        raise ValueError(f"{len(ranked)} glue rows but {len(fan_out)} fan-out entries")
    depths, roots = [], []
    for j, (cands, f) in enumerate(zip(ranked, fan_out)):
        take = cands[:f]
        depths += [j] * len(take)
        roots += list(take)
    return depths, roots


def fork_layout(fan_out: list[int], first_row: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Branches of one sequence whose glue rows start at row ``first_row`` of a [G, width] ranked
    candidate table: (depths [n], flat indices [n] into the table), depth-major, F_j per depth j.
    The same order as :func:`fork`, computed on the host without reading the candidates."""
    if any(f < 0 or f > width for f in fan_out):
        raise ValueError(f"fan-out {fan_out} must lie in [0, width={width}]")
    depths = np.repeat(np.arange(len(fan_out)), fan_out)
    ranks = np.concatenate([np.arange(f) for f in fan_out]) if fan_out else np.zeros(0, np.int64)
    return depths.astype(np.int64), ((first_row + depths) * width + ranks).astype(np.int64)


def branch_positions(fork_len: np.ndarray, steps: int) -> np.ndarray:
    """[steps, n] storage (= RoPE) position of branch i's step-s token: fork_len[i] + s, where
    fork_len[i] is the number of tokens the branch shares with its sequence (L + depth)."""
    fork_len = np.asarray(fork_len, dtype=np.int64)
    return fork_len[None, :] + np.arange(steps, dtype=np.int64)[:, None]


def branch_slots(tables, positions: np.ndarray, block_size: int) -> np.ndarray:
    """[steps, n] KV slot of each branch token: tables [n, W] (row i: branch i's block table, padded;
    or a list of lists), positions [steps, n]."""
    if not isinstance(tables, np.ndarray):
        width = max((len(t) for t in tables), default=0)
        arr = np.zeros((len(tables), width), dtype=np.int64)
        for i, t in enumerate(tables):
            arr[i, : len(t)] = t
        tables = arr
    positions = np.asarray(positions, dtype=np.int64)
    blocks = np.take_along_axis(tables, (positions // block_size).T, axis=1).T          # [steps, n]
    return blocks * block_size + positions % block_size
