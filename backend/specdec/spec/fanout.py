"""Fan-out: how many recovery-token guesses the speculation cache holds at each depth.

After a round with K draft tokens the verification outcome is (k, t*): k in [0, K] draft
tokens accepted, then the recovery (bonus) token t*. The draft cannot know the outcome, so
for each *depth* k it forks F_k candidates for t* and prepares the next speculation for each.
The fan-out list [F_0 .. F_K] sums to the per-sequence *budget* (the paper's B, the
reference's MQ_LEN). ``fan_out_hit`` is used for a sequence whose current speculation came
from the cache, ``fan_out_miss`` after a backup speculation (paper: F^p and F^b).

Geometric fan-out (paper Theorem 12): with per-token acceptance alpha, outcome probabilities
P(k) = alpha^k (1 - alpha) for k < K and P(K) = alpha^K; if the cache-miss rate at one depth
follows the power law 1 - p_hit(F) = F^(-r) (Definition 11), maximising the hit probability
sum_k P(k) (1 - F_k^(-r)) under sum_k F_k = B gives F_k proportional to P(k)^(1/(1+r)).
"""
from __future__ import annotations

import math

import numpy as np

from ..config import DEFAULT_FAN_OUT


def uniform_fan_out(f: int, k: int) -> list[int]:
    return [f] * (k + 1)


def outcome_probs(alpha: float, k: int) -> np.ndarray:
    """P(k accepted) for k = 0..K under i.i.d. acceptance alpha (truncated geometric)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1]")
    j = np.arange(k + 1)
    p = alpha ** j * (1.0 - alpha)
    p[k] = alpha ** k
    return p


def round_to_budget(weights, budget: int, caps) -> list[int]:
    """Integers proportional to ``weights`` summing to ``budget``, each <= its cap.

    Water-filling on the real values (entries that exceed their cap are pinned to it and the
    rest rescaled), then largest-remainder rounding. Raises when the caps cannot hold the budget.
    """
    w = np.asarray(weights, dtype=np.float64)
    caps = np.asarray(caps, dtype=np.int64)
    if w.shape != caps.shape or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights must be finite, >= 0 and match caps")
    if budget < 0 or budget > caps.sum():
        raise ValueError(f"budget {budget} does not fit the caps (sum {int(caps.sum())})")
    x = np.zeros_like(w)
    free = caps > 0
    while True:
        left = budget - x[~free].sum()
        ws = w * free
        if ws.sum() <= 0:                               # only zero weights left: spread evenly
            ws = free.astype(np.float64)
        x[free] = (ws / ws.sum() * left)[free]
        over = free & (x > caps)
        if not over.any():
            break
        x[over] = caps[over]
        free &= ~over
    out = np.minimum(np.floor(x + 1e-9).astype(np.int64), caps)
    rem = budget - int(out.sum())
    order = np.argsort(-(x - out), kind="stable")      # largest remainders first
    for i in order:
        if rem == 0:
            break
        if out[i] < caps[i]:
            out[i] += 1
            rem -= 1
    if rem:                                             # rounding left some: anywhere with room
        for i in np.argsort(-w, kind="stable"):
            take = min(rem, int(caps[i] - out[i]))
            out[i] += take
            rem -= take
    return out.tolist()


def geometric_fan_out(alpha: float, r: float, k: int, budget: int, vocab_size: int | None = None) -> list[int]:
    """Paper Theorem 12: F_j proportional to P(j)^(1/(1+r)), rounded to integers summing to budget.

    Caps: at depth j < K the rejected draft token is excluded, so at most V-1 candidates; V at K.
    """
    if r < 0:
        raise ValueError(f"r={r} must be >= 0")
    p = outcome_probs(min(max(alpha, 0.0), 1.0), k)
    big = budget if vocab_size is None else vocab_size
    caps = [big - 1 if vocab_size is not None else big] * k + [big]
    return round_to_budget(p ** (1.0 / (1.0 + r)), budget, caps)


def acceptance_mle(accepted: np.ndarray, num_draft: np.ndarray) -> float | None:
    """Per-token acceptance from rounds (k accepted of K drafted): sum k / sum (k + [k < K])."""
    accepted, num_draft = np.asarray(accepted), np.asarray(num_draft)
    tests = accepted + (accepted < num_draft)
    return float(accepted.sum() / tests.sum()) if tests.sum() > 0 else None


def fit_power_law(rank_counts: np.ndarray, beyond: int) -> float | None:
    """Fit r in 1 - p_hit(F) = F^(-r) from how often t* had each rank among the candidates.

    rank_counts[i] = outcomes whose t* was the (i+1)-th best candidate; beyond = outcomes
    ranked past the window. Least squares of log miss(F) on -log F through the origin, over
    F = 2..R where the miss rate is still positive. None when there is too little data.
    """
    counts = np.asarray(rank_counts, dtype=np.float64)
    n = counts.sum() + beyond
    if n < 20:
        return None
    miss = 1.0 - np.cumsum(counts) / n                  # miss[F-1] = P(rank >= F)
    f = np.arange(1, len(counts) + 1, dtype=np.float64)
    ok = (f >= 2) & (miss > 0)
    if ok.sum() < 2:
        return None
    x, y = np.log(f[ok]), np.log(miss[ok])
    r = -float((x * y).sum() / (x * x).sum())
    return min(max(r, 0.05), 10.0) if math.isfinite(r) else None


def saguaro_top(fan: list[int]) -> list[int]:
    """How many top draft probabilities Saguaro rescales at each depth: F_j + 1 (the cached set
    at depth j is top-F_j *excluding* the drafted token, which is itself usually a top token),
    0 where nothing is cached."""
    return [f + 1 if f > 0 else 0 for f in fan]


def resolve_fan_out(spec) -> tuple[list[int], list[int], list[int], bool]:
    """A SpecConfig's fan-out lists (hit, after a JIT miss, after a fast miss) and whether they are
    geometric (then these are only the budget's starting point; the draft recomputes them).

    Defaults: uniform F at every depth; the hit list doubles as the miss list when only it is
    given; after a fast miss (random tokens, k = 0 almost surely) the whole budget goes to
    depth 0 unless fan_out_miss says otherwise.
    """
    k = spec.k
    geometric = spec.fan_out == "geometric"
    if spec.fan_out_hit is not None:
        hit = list(spec.fan_out_hit)
    elif geometric:
        budget = spec.fan_out_budget or DEFAULT_FAN_OUT * (k + 1)
        hit = round_to_budget([1.0] * (k + 1), budget, [budget] * (k + 1))
    else:
        hit = uniform_fan_out(spec.fan_out, k)
    budget = sum(hit)
    miss = list(spec.fan_out_miss) if spec.fan_out_miss is not None else list(hit)
    fast = list(spec.fan_out_miss) if spec.fan_out_miss is not None else [budget] + [0] * k
    return hit, miss, fast, geometric

