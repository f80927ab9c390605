"""Verification of a speculation: which draft tokens the target accepts, and the recovery token.

Terms used throughout specdec:

* *draft tokens* d1..dK: proposed by the draft for one sequence; K = ``num_draft`` of that row.
* *speculation*: [last, d1..dK], where ``last`` is the newest committed token (no K/V yet). The
  target scores it in one forward, giving p_0..p_K: p_i is the target's distribution of the
  token after [.., last, d1..di].
* *accepted* k in [0, K]: the length of the accepted prefix of d1..dK.
* *recovery (bonus) token* t*: sampled from the residual norm(max(0, p_k - q_k)) when d_{k+1}
  was rejected, or from p_K when every draft token was accepted (the bonus).
* The *verification outcome* (k, t*) commits 1 + k tokens: d1..dk and t*.

Rejection sampling (Leviathan et al. 2023, Chen et al. 2023): accept d_i with probability
min(1, p_i(d_i) / q_i(d_i)), where q_i is exactly the distribution d_i was sampled from. The
committed tokens are then distributed exactly as the target's own samples. At temperature 0,
p is one-hot at the argmax, so the rule reduces to "accept while d_i equals the argmax" and
t* is the argmax: greedy output is identical to the target alone, whatever the draft.
"""
from __future__ import annotations

import torch

from ..layers.sampling import sample_from_probs


def verify(target_probs: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
           num_draft: torch.Tensor, u_accept: torch.Tensor, u_recover: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rejection-sample a batch of speculations.

    target_probs  [B, K+1, V]  p (one-hot rows for greedy requests)
    draft_tokens  [B, K]       d1..dK (entries at or past num_draft are ignored)
    draft_probs   [B, K, V]    q, or None when every draft is deterministic (q one-hot at d)
    num_draft     [B]          drafts proposed per row, 0..K (0: the row just samples from p_0)
    u_accept      [B, K]       uniforms in [0, 1) for the accept tests
    u_recover     [B]          uniforms in [0, 1) for the recovery/bonus sample
    Returns (accepted [B] int64, recovery [B] int64), on the device, with no host sync (the range of
    num_draft is checked only when it lives on the CPU, where that costs no sync).
    """
    if target_probs.dim() != 3 or draft_tokens.dim() != 2:
        raise ValueError(f"target_probs must be [B, K+1, V] and draft_tokens [B, K]; got "
                         f"{tuple(target_probs.shape)} and {tuple(draft_tokens.shape)}")
    B, K1, V = target_probs.shape
    K = K1 - 1
    if draft_tokens.shape != (B, K):
        raise ValueError(f"draft_tokens shape {tuple(draft_tokens.shape)} != {(B, K)}")
    if draft_probs is not None and draft_probs.shape != (B, K, V):
        raise ValueError(f"draft_probs shape {tuple(draft_probs.shape)} != {(B, K, V)}")
    if num_draft.device.type == "cpu" and bool(((num_draft < 0) | (num_draft > K)).any()):
        raise ValueError(f"num_draft must lie in [0, {K}]")

    rows = torch.arange(B, device=target_probs.device)
    if K > 0:
        d = draft_tokens.clamp(0, V - 1)
        p_d = target_probs[:, :K].gather(-1, d[..., None]).squeeze(-1)                    # [B, K]
        q_d = torch.ones_like(p_d) if draft_probs is None else draft_probs.gather(-1, d[..., None]).squeeze(-1)
        ratio = torch.where(q_d > 0, p_d / q_d.clamp_min(1e-30), torch.where(p_d > 0, torch.inf, 0.0))
        proposed = torch.arange(K, device=d.device)[None, :] < num_draft[:, None]
        ok = (u_accept < ratio) & proposed                                                 # P(ok) = min(1, p/q)
        accepted = ok.long().cumprod(-1).sum(-1)                                           # first rejection
    else:
        accepted = torch.zeros(B, dtype=torch.long, device=target_probs.device)

    p_k = target_probs[rows, accepted]                                                     # [B, V]
    rejected = accepted < num_draft
    if K > 0:                         # every row computes its residual; rows that accepted all keep p_K
        k_idx = accepted.clamp(max=K - 1)
        if draft_probs is None:
            q_k = torch.zeros_like(p_k).scatter_(-1, d[rows, k_idx][:, None], 1.0)
        else:
            q_k = draft_probs[rows, k_idx]
        residual = (p_k - q_k).clamp_min(0)
        empty = residual.sum(-1, keepdim=True) <= 0
        residual = torch.where(empty, p_k, residual)                                       # p == q: fall back to p
        dist = torch.where(rejected[:, None], residual, p_k)
    else:
        dist = p_k
    return accepted, sample_from_probs(dist, u_recover)


def greedy_accept_length(draft_tokens: torch.Tensor, target_argmax: torch.Tensor, num_draft: torch.Tensor) -> torch.Tensor:
    """Greedy rule alone: draft_tokens [B, K], target_argmax [B, K+1], num_draft [B] -> accepted [B]."""
    K = draft_tokens.shape[1]
    match = (draft_tokens == target_argmax[:, :K]) & (torch.arange(K, device=draft_tokens.device)[None] < num_draft[:, None])
    return match.long().cumprod(-1).sum(-1)


def greedy_outcome(logits: torch.Tensor, verified: torch.Tensor, num_draft: torch.Tensor) -> torch.Tensor:
    """A greedy round's whole outcome in one tensor, so it reaches the host in one copy.

    logits [B, Q, V] (row i: the target after [.., last, d1..di]); verified [B, Q] = [last, d1..d_{Q-1}];
    num_draft [B] drafts proposed per row (0 = a plain AR row). Returns [B, 1 + Q] int64:
    accepted k, the recovery token t* (the argmax after the accepted prefix), then d1..d_{Q-1}."""
    argmax = logits.argmax(-1)                                                        # [B, Q]
    drafts = verified[:, 1:]
    accepted = greedy_accept_length(drafts, argmax, num_draft)
    recovery = argmax.gather(1, accepted[:, None])
    return torch.cat([accepted[:, None], recovery, drafts], dim=1)


class GreedyRound:
    """:func:`greedy_outcome` as a forward's epilogue (runner/cuda_graphs.py): captured in the verify
    graph, with num_draft as its per-row ints."""

    name = "greedy_outcome"

    def __init__(self, num_draft: list[int]):
        self.row_ints = num_draft

    def __call__(self, logits: torch.Tensor, verified: torch.Tensor, num_draft: torch.Tensor) -> torch.Tensor:
        return greedy_outcome(logits, verified, num_draft)
