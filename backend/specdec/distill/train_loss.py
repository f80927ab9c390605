"""The distillation losses' common part: KL(teacher || student) over the full vocabulary, in row chunks.

Both students (a few-layer Llama draft, an EAGLE head) end in the target's LM head, so a loss row is
a pair of final hidden states (student's, teacher's) [H] and the two LM head matrices [V, H]; the
[N, V] logits are formed ``chunk`` rows at a time, each chunk recomputed in the backward pass
(activation checkpointing) when there is more than one, so memory stays bounded at large batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def kl_sum(h_draft: torch.Tensor, h_teacher: torch.Tensor, w_draft: torch.Tensor, w_teacher: torch.Tensor):
    """Summed KL(p_teacher || q_draft) and top-1 agreements over rows.

    h_draft, h_teacher: [n, H] final (normed) hidden states; w_draft, w_teacher: [V, H] LM heads.
    """
    log_q = F.linear(h_draft, w_draft).float().log_softmax(-1)              # [n, V]
    with torch.no_grad():
        log_p = F.linear(h_teacher, w_teacher).float().log_softmax(-1)       # [n, V]
        agree = (log_p.argmax(-1) == log_q.argmax(-1)).sum()
    return F.kl_div(log_q, log_p, log_target=True, reduction="sum"), agree


def chunked_kl(h_draft, h_teacher, w_draft, w_teacher, chunk: int):
    """kl_sum over row chunks of at most ``chunk`` rows (checkpointed when there is more than one)."""
    n = h_draft.shape[0]
    if n <= chunk:
        return kl_sum(h_draft, h_teacher, w_draft, w_teacher)
    total, agree = 0.0, 0
    for i in range(0, n, chunk):
        kl, a = checkpoint(kl_sum, h_draft[i: i + chunk], h_teacher[i: i + chunk], w_draft, w_teacher,
                           use_reentrant=False)
        total, agree = total + kl, agree + a
    return total, agree


def llama_batch_loss(teacher, draft, ids, mask, autocast, loss_chunk: int, lm_rows: torch.Tensor | None = None):
    """(mean KL per loss token, top-1 agreement, loss tokens N) of a few-layer Llama draft over a batch.

    ids [B, L], mask [B, L] (host tensors; mask True at loss positions): both final hidden states are
    gathered at the loss positions ([N, H]) and compared through their LM heads. lm_rows [V', H] (the
    shared, frozen LM head's rows of the exported head's tokens): both distributions over those tokens
    only, renormalised -- what the exported draft drafts from, at a sixth of the logit work."""
    device = next(draft.parameters()).device
    H = teacher.config.hidden_size
    rows = mask.view(-1).nonzero().squeeze(1)            # loss positions, found on the host (no device sync)
    ids, idx = ids.to(device, non_blocking=True), rows.to(device, non_blocking=True)
    n = max(len(rows), 1)
    with autocast:
        with torch.no_grad():
            h_t = teacher.model(input_ids=ids, use_cache=False).last_hidden_state.view(-1, H)[idx]   # [N, H]
        h_d = draft.model(input_ids=ids, use_cache=False).last_hidden_state.view(-1, H)[idx]         # [N, H]
        w_d, w_t = (draft.lm_head.weight, teacher.lm_head.weight) if lm_rows is None else (lm_rows, lm_rows)
        kl, agree = chunked_kl(h_d, h_t, w_d, w_t, loss_chunk)
    return kl / n, agree / n, len(rows)
