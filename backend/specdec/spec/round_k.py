"""How many draft tokens a row asks for in a round: the one rule, used by the engine and the drafters."""
from __future__ import annotations


def request_k(configured_k: int, requested: int | None) -> int:
    """The most draft tokens a request will ask for: the engine's K, or the request's own
    ``num_draft_tokens`` when it asks for fewer (0 = plain autoregressive decoding)."""
    return configured_k if requested is None else min(requested, configured_k)


def round_k(configured_k: int, requested: int | None, remaining: int, room: int) -> int:
    """Draft tokens for this round: :func:`request_k`, and no more than the request can still use.

    remaining: tokens the request may still generate (max_tokens - generated); a round commits up to
    K + 1, so K <= remaining - 1. room: free positions before max_model_len after the newest token
    (max_model_len - len - 1); the verify forward writes K + 1 positions from len - 1 on."""
    return max(0, min(request_k(configured_k, requested), remaining - 1, room))
