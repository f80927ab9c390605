"""Layout of the speculation tree (draft side): forking and the tree-decode masks.

For one sequence with committed length L (t* at position L-1) and drafted d1..dK, the *glue*
[t*, d1..dK] sits at storage/RoPE positions L-1 .. L-1+K; glue row j is the draft's
distribution after [.., t*, d1..dj]. Forking takes, at depth j, the top-F_j tokens of row j,
excluding d_{j+1} for j < K (a rejected token is never the recovery token: at temperature 0
it differs from the argmax, above it its residual is 0). Branch i = (depth j_i, root c_i)
stands for the outcome "j_i accepted, recovery c_i".

Tree decode: K steps, each one batched forward over all branches of all sequences. Branch i's
step-s token is stored at ``base + s*n + i`` (n branches, base = first storage slot after the
glue) with RoPE position ``glue_start + j_i + 1 + s``, and sees the prefix, glue[0..j_i] and
its own earlier tree tokens: each branch is an independent chain. After PREFILL the same
layout applies with glue = [last prompt token] and every branch at depth 0.
"""
from __future__ import annotations

import torch


def ranked_candidates(logits: torch.Tensor, exclude: torch.Tensor, width: int) -> torch.Tensor:
    """logits [G, V] (glue rows); exclude [G] token to drop per row (-1 = none) -> [G, width] token
    ids, best first (the fork at depth j takes the first F_j of row j)."""
    if logits.dim() != 2 or exclude.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [G, V] and exclude [G]; got {tuple(logits.shape)}, {tuple(exclude.shape)}")
    width = min(width, logits.shape[1])
    masked = logits.clone()
    rows = torch.nonzero(exclude >= 0).squeeze(-1)
    masked[rows, exclude[rows]] = float("-inf")
    return masked.topk(width, dim=-1, sorted=True).indices


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


def tree_mask(glue_start: int, depths: list[int], base: int, steps: int) -> torch.Tensor:
    """[n, base + steps*n] bool visibility of the last tree step (step s uses the first
    base + (s+1)*n columns): prefix and glue up to storage glue_start + j_i, then column
    base + s'*n + i for every step s'."""
    n = len(depths)
    d = torch.tensor(depths, dtype=torch.int64)
    cols = torch.arange(base + steps * n)
    mask = cols[None, :] <= (glue_start + d)[:, None]                          # prefix + own glue
    own = base + torch.arange(steps)[None, :] * n + torch.arange(n)[:, None]   # [n, steps]
    mask[torch.arange(n)[:, None].expand(n, steps), own] = True
    return mask


def tree_positions(glue_start: int, depths: list[int], step: int) -> list[int]:
    """RoPE positions of the branches' step-``step`` tokens."""
    return [glue_start + j + 1 + step for j in depths]


def tree_slots(base: int, n: int, step: int) -> int:
    """Storage position of branch 0's step-``step`` token (branch i is at the returned value + i)."""
    return base + step * n
