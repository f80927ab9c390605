"""Saguaro sampling (the paper's Definition 14, constant C = ``sampler_x``).

sigma_{F,C}(z)_t is proportional to C * exp(z_t) for t in top_F(z) and to exp(z_t) otherwise,
C in (0, 1]. Lowering q on the tokens the next speculation cache already covers moves the
residual max(0, p - q) onto them, so a rejection's recovery token is more often a cache hit
(at the price of a lower acceptance). The draft samples from the rescaled q and returns it;
verification uses that same q, so the output distribution stays exactly the target's.
"""
from __future__ import annotations

import torch


def saguaro_rescale(probs: torch.Tensor, top: torch.Tensor, c: float, width: int | None = None) -> torch.Tensor:
    """Multiply the ``top[n]`` largest entries of row n by c and renormalise.

    probs [N, V] (rows sum to 1, e.g. after temperature / top-k / top-p); top [N] int64 in
    [0, V] (0 = leave the row as is); width = max(top) when the caller knows it on the host
    (saves a device sync); returns [N, V]. Ties are broken by position, the same way on every
    call, so the result is a function of (probs, top, c).
    """
    if probs.dim() != 2 or top.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, V] and top [N]; got {tuple(probs.shape)} and {tuple(top.shape)}")
    if not 0.0 < c <= 1.0:
        raise ValueError(f"sampler_x (C)={c} must lie in (0, 1]")
    V = probs.shape[1]
    if width is not None:
        m = width
    else:
        m = int(top.max()) if top.numel() else 0      # host sync: the widest top-m of the batch
    if m == 0 or c == 1.0:
        return probs
    m = min(m, V)
    idx = probs.topk(m, dim=-1, sorted=True).indices                         # [N, m]
    inside = torch.arange(m, device=probs.device)[None, :] < top[:, None]     # [N, m]
    scale = torch.ones_like(probs).scatter_(-1, idx, torch.where(inside, c, 1.0).to(probs.dtype))
    out = probs * scale
    return out / out.sum(-1, keepdim=True)
