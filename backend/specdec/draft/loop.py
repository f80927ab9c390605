"""The K-step draft loop: the one way a draft model drafts tokens one decode step at a time.

Used by the local draft model (sync mode, :class:`~.model.ModelDrafter`) and by the draft worker's
JIT backup (:class:`~.core.DraftCore`). Step 0 runs each row's catch-up feed (every committed token
the draft has no K/V for, ending with the newest one); step i > 0 feeds the token sampled at step
i - 1 at storage position ``ends[b] - 1 + i``, read on the device (no host round trip between
steps). Every row runs every step (rows already done are placeholder rows that write nowhere) so
the shapes stay fixed for CUDA graphs.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..runner.feed import Feed

# sample(logits [B, V], step) -> (tokens [B] int64, q [B, V] or None when every row is greedy)
Sampler = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor | None]]


def draft_loop(forward, catch_up: list[Feed], ends: list[int], ks: list[int], sample: Sampler,
               vocab_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draft ks[b] tokens for row b (max(ks) steps).

    forward(feeds, device_tokens) -> logits [B, V]: one row per feed, over the target's vocabulary.
    catch_up[b]: row b's step-0 feed (a dummy feed for a row with ks[b] == 0); ends[b]: the row's
    committed length (its newest token sits at ends[b] - 1). Returns tokens [B, K] int64 on the
    draft's device (zeros past ks[b]) and q [B, K, V] (None when ``sample`` returns no q).
    """
    B, K = len(catch_up), max(ks, default=0)
    tokens = probs = prev = None
    for i in range(K):
        if i == 0:
            logits = forward(catch_up, None)                                   # [B, V]
        else:
            feeds = [Feed(f.seq_id, [0], ends[b] - 1 + i, dummy=ks[b] <= i) for b, f in enumerate(catch_up)]
            logits = forward(feeds, (prev[:, None], 0))
        tok, q = sample(logits, i)
        if tokens is None:
            tokens = torch.zeros((B, K), dtype=torch.long, device=tok.device)
            if q is not None:
                probs = torch.zeros((B, K, vocab_size), dtype=torch.float32, device=q.device)
        tokens[:, i] = tok
        if probs is not None:
            probs[:, i] = q
        prev = tok
    return tokens, probs
