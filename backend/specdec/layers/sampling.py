"""Turning logits into the distributions that are sampled and verified.

``probs_from_logits`` applies temperature, top-k and top-p per row; the same function makes the
target's p and the draft's q, so verification compares exactly the distributions that were
sampled from. Greedy rows (temperature 0) get a one-hot at the argmax.

Sampling is inverse-CDF with uniforms drawn by the caller (one stream per seeded request), so a
seeded request gives the same output whatever else shares its batch.
"""
from __future__ import annotations

import torch


def probs_from_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                      top_p: torch.Tensor) -> torch.Tensor:
    """logits [N, V] float32; temperature/top_k/top_p [N] -> probs [N, V] float32 (rows sum to 1).

    top_k 0 = no top-k; top_p 1 = no nucleus filter; temperature 0 = one-hot at the argmax.
    """
    greedy = temperature == 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = logits / t[:, None]
    vocab = logits.shape[-1]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):   # host sync: skip the sort when unused
        scaled = _filter_top_k_top_p(scaled, top_k, top_p, vocab)
    probs = torch.softmax(scaled, dim=-1)
    if bool(greedy.any()):
        onehot = torch.zeros_like(probs).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        probs = torch.where(greedy[:, None], onehot, probs)
    return probs


def _filter_top_k_top_p(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, vocab: int) -> torch.Tensor:
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    drop = ranks >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    # keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop = drop | (before >= top_p[:, None])
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(scaled).scatter_(-1, order, sorted_logits)


def sample_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """probs [N, V] (rows need not be normalised); uniforms [N] in [0, 1) -> token ids [N] int64."""
    cdf = torch.cumsum(probs, dim=-1)
    target = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)
