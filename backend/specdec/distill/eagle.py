"""Training an EAGLE head (models/eagle.py) on the target's own features (``specdec distill --arch eagle``).

Per batch: the frozen teacher gives the features f [B, L, H] (its final normed hidden states); the
head runs teacher-forced over (f_j, x_{j+1}), ``eagle_steps`` levels deep (level s feeds back level
s-1's guesses, as drafting does on its s-th step). Loss per level s, over positions j >= s - 1 whose
next target position predicts a completion token:

    KL(p_{j+1} || q_s,j) + feature_weight * mean_h SmoothL1(g_s,j[h], f_{j+1}[h])

with p_{j+1} = softmax(LM head(f_{j+1})) the target's distribution of x_{j+2} and q the head's
(the target's LM head applied to g). Levels are averaged with weights 1, 1/2, 1/4, ... (the first
draft token gates all later ones); top-1 agreement is reported for level 1 (the first draft token).
With ``head_vocab`` (the exported head's token list), both distributions are taken over those tokens
only, renormalised: the distribution the head drafts from, at a sixth of the logit work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers.rotary import RotaryEmbedding, inverse_frequencies
from ..models.eagle import EagleArch, EagleHead, save_eagle
from .train_loss import chunked_kl

LEVEL_DECAY = 0.5          # level s weighs LEVEL_DECAY^(s-1): the first draft token gates every later one


def head_rows(teacher, head_ids: torch.Tensor | None) -> torch.Tensor | None:
    """The teacher's LM-head rows of ``head_ids`` (a frozen copy), or None for the whole vocabulary."""
    if head_ids is None:
        return None
    w = teacher.lm_head.weight
    return w.detach()[head_ids.to(w.device)].clone()


def init_eagle(teacher, layers: int, max_positions: int) -> EagleHead:
    """A float32 head of ``layers`` layers for the HF ``teacher``, starting as a pass-through of the feature
    (:meth:`EagleHead.init_from_target`: layers copied from the teacher's last one, outputs zeroed)."""
    cfg = teacher.config
    device = next(teacher.parameters()).device
    rotary = RotaryEmbedding(*inverse_frequencies(cfg), max_positions).to(device)
    head = EagleHead(EagleArch.from_hf(cfg, layers), rotary).to(device)
    last = teacher.model.layers[-1]
    a = last.self_attn
    state = {"input_norm.weight": last.input_layernorm.weight,
             "qkv.weight": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
             "o_proj.weight": a.o_proj.weight,
             "post_norm.weight": last.post_attention_layernorm.weight,
             "gate_up.weight": torch.cat([last.mlp.gate_proj.weight, last.mlp.up_proj.weight]),
             "down.weight": last.mlp.down_proj.weight}
    head.init_from_target({k: v.detach().float() for k, v in state.items()})
    head.attach(teacher.model.embed_tokens, teacher.lm_head)
    return head.train()


def eagle_batch_loss(teacher, head: EagleHead, ids, mask, autocast, loss_chunk: int, steps: int,
                     feature_weight: float, lm_rows: torch.Tensor | None = None):
    """(loss averaged over levels, top-1 agreement of level 1 = the first draft token, its loss
    positions N). ids [B, L], mask [B, L] host tensors (mask: position t predicts a completion token).

    lm_rows [V', H]: compare the two distributions over these LM-head rows only (the exported head's
    tokens, renormalised on both sides): what drafting uses, and 6x less logit work than 49152 rows."""
    device = next(head.parameters()).device
    ids_d = ids.to(device, non_blocking=True)
    L = ids.shape[1]
    jj = torch.arange(L - 1)[None, :]
    # level s: positions j >= s - 1 whose next position j + 1 predicts a completion token (host: no sync)
    sels = [(mask[:, 1:] & (jj >= s - 1)).reshape(-1).nonzero().squeeze(1) for s in range(1, steps + 1)]
    sels_d = [x.to(device, non_blocking=True) for x in sels]
    w = teacher.lm_head.weight if lm_rows is None else lm_rows
    total, agree_first = 0.0, torch.zeros((), device=device)
    with autocast:
        with torch.no_grad():
            f = teacher.model(input_ids=ids_d, use_cache=False).last_hidden_state            # [B, L, H]
        levels = head.forward_train(f[:, :-1], ids_d[:, 1:], steps)                       # steps x [B, L-1, H]
        H = f.shape[-1]
        target = f[:, 1:].reshape(-1, H)                                                   # f_{j+1}
        used = 0
        for s, (g, sel, sel_d) in enumerate(zip(levels, sels, sels_d), start=1):
            if len(sel) == 0:
                continue
            g_s, t_s = g.reshape(-1, H)[sel_d], target[sel_d]
            kl, agree = chunked_kl(g_s, t_s, w, w, loss_chunk)
            loss = kl
            if feature_weight:
                loss = loss + feature_weight * F.smooth_l1_loss(g_s.float(), t_s.float(), reduction="sum") / H
            weight = LEVEL_DECAY ** (s - 1)
            total = total + weight * loss / len(sel)
            used += weight
            if s == 1:
                agree_first = agree / len(sel)
    return total / max(used, 1e-9), agree_first, len(sels[0])


def export_eagle(head: EagleHead, teacher, tokenizer, base: str, out, save_dtype: torch.dtype, info: dict,
                 head_ids=None):
    shared = {"model.embed_tokens.weight": teacher.model.embed_tokens.weight}
    return save_eagle(out, head, base, shared, save_dtype, info=info, head_ids=head_ids)
