"""The distillation loop: minimise KL(target || draft) over the target's own completions.

Per step: a batch of corpus rows ``input_ids`` [B, L] goes through the frozen teacher (no grad)
and the draft; both final hidden states are gathered at the loss positions ([N, H], N = loss
tokens in the batch), and the loss is the mean over those positions of
KL(softmax(teacher logits) || softmax(draft logits)) over the full vocabulary. The [N, V]
logits are formed ``loss_chunk`` rows at a time; with more than one chunk each chunk is
recomputed in the backward pass instead of kept (activation checkpointing), so memory stays
bounded at large batches.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from ..models.draft_head import frequent_tokens
from ..models.loader import DTYPES, load_tokenizer
from .checkpoint import load_checkpoint, save_checkpoint, save_config, state_dir
from .config import DistillConfig
from .batches import Batcher, eval_batches, split_by_prompt
from .data import load_or_generate
from .export import export_draft, exported_bytes
from .model import init_draft, load_teacher, num_params, trainable

log = logging.getLogger(__name__)

H100_BF16_FLOPS = 989e12
ASSUMED_MFU = 0.25


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


def flops_per_token(teacher_layers: int, draft_layers: int, head: int, head_trained: bool) -> int:
    """Approximate matmul FLOPs per loss token (attention scores and padding ignored): teacher forward;
    draft forward + backward, the LM head without weight gradients unless trained; one recomputed head."""
    teacher = 2 * (teacher_layers + head)
    draft = 6 * draft_layers + (6 if head_trained else 4) * head
    return teacher + draft + 2 * head


def lr_lambda(cfg: DistillConfig):
    warm = cfg.warmup_steps

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def batch_kl(teacher, draft, ids, mask, autocast, loss_chunk: int):
    """Summed KL and top-1 agreements over a batch's loss positions, and their number N.

    ids [B, L], mask [B, L] (host tensors; mask True at loss positions)."""
    device = next(draft.parameters()).device
    H = teacher.config.hidden_size
    rows = mask.view(-1).nonzero().squeeze(1)            # loss positions, found on the host (no device sync)
    ids, idx = ids.to(device, non_blocking=True), rows.to(device, non_blocking=True)
    with autocast:
        with torch.no_grad():
            h_t = teacher.model(input_ids=ids, use_cache=False).last_hidden_state.view(-1, H)[idx]   # [N, H]
        h_d = draft.model(input_ids=ids, use_cache=False).last_hidden_state.view(-1, H)[idx]         # [N, H]
        kl, agree = chunked_kl(h_d, h_t, draft.lm_head.weight, teacher.lm_head.weight, loss_chunk)
    return kl, agree, len(rows)


def train_step(teacher, draft, ids, mask, opt, sched, params, autocast, loss_chunk: int):
    """One optimizer step; returns the mean KL per loss token and the top-1 agreement (device
    scalars) and the number of loss tokens."""
    kl, agree, n = batch_kl(teacher, draft, ids, mask, autocast, loss_chunk)
    loss = kl / n
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach(), agree / n, n


@torch.no_grad()
def evaluate(teacher, draft, batches, autocast, loss_chunk: int) -> tuple[float, float]:
    """Mean KL per loss token and top-1 agreement over ``batches`` (validation: unseen prompts)."""
    kl_total, agree_total, n_total = 0.0, 0, 0
    for ids, mask in batches:
        kl, agree, n = batch_kl(teacher, draft, ids, mask, autocast, loss_chunk)
        kl_total, agree_total, n_total = kl_total + kl.item(), agree_total + agree.item(), n_total + n
    return kl_total / max(n_total, 1), agree_total / max(n_total, 1)


def describe(cfg: DistillConfig, corpus, batcher, teacher, draft, start: int) -> list[str]:
    """The run in two lines: what is trained on what, and a rough H100 time for the training part."""
    head = teacher.config.vocab_size * teacher.config.hidden_size
    per_step = corpus.num_completion_tokens / len(corpus) * cfg.batch          # loss tokens per step (mean)
    tokens = per_step * (cfg.steps - start)
    flops = tokens * flops_per_token(num_params(teacher.model.layers), num_params(draft.model.layers), head,
                                     cfg.train_embeddings)
    return [f"distill: {cfg.layers}-layer draft of {cfg.target}, {num_params(draft, True) / 1e6:.1f}M trainable params; "
            f"corpus {len(corpus)} seqs ({len(batcher.rows)} train, {len(corpus) - len(batcher.rows)} validation), "
            f"{corpus.num_completion_tokens / 1e3:.0f}k loss tokens "
            f"({batcher.per_epoch} steps per epoch, {cfg.steps / batcher.per_epoch:.1f} epochs)",
            f"estimate: {cfg.steps - start} steps x ~{per_step / 1e3:.1f}k loss tokens = {tokens / 1e6:.2f}M tokens, "
            f"{flops / 1e12:.0f} TFLOP -> ~{flops / (H100_BF16_FLOPS * ASSUMED_MFU):.0f} s of training on one H100 "
            f"(bf16 at {ASSUMED_MFU:.0%} of peak), plus corpus generation"]


def train(cfg: DistillConfig, report=log.info) -> Path:
    """Run (or resume) the distillation; ``report`` receives the summary lines (the command prints them).

    The progress bar's tok/s counts loss tokens (completion positions) per second of training."""
    out = Path(cfg.out)
    sdir = state_dir(out)
    save_config(cfg, sdir)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)

    corpus = load_or_generate(cfg, sdir / "corpus.pt")
    train_rows, val_rows = split_by_prompt(corpus)
    batcher = Batcher(corpus, train_rows, cfg.batch, cfg.seed)
    teacher, folder = load_teacher(cfg.target, device, cfg.compute_dtype)
    tokenizer = load_tokenizer(folder)
    draft = init_draft(teacher, cfg.layers, cfg.train_embeddings)
    params = [p for _, p in trainable(draft)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    start = load_checkpoint(sdir, draft, opt, sched)
    if start:
        log.info("resuming at step %d of %d", start, cfg.steps)
    for line in describe(cfg, corpus, batcher, teacher, draft, start):
        report(line)

    head_ids = None
    if 0 < cfg.head_vocab < teacher.config.vocab_size:
        eos = teacher.config.eos_token_id
        always = [t for t in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]
                  if t is not None]
        head_ids, coverage = frequent_tokens(corpus.sequences, corpus.prompt_lens, cfg.head_vocab,
                                             teacher.config.vocab_size, always)
        report(f"draft LM head: the {len(head_ids)} most frequent tokens, {coverage:.2%} of the corpus's completion tokens")

    autocast = (torch.autocast(device.type, dtype=DTYPES[cfg.compute_dtype])
                if cfg.compute_dtype != "float32" else contextlib.nullcontext())

    def export(step: int) -> None:
        info = {"target": cfg.target, "layers": cfg.layers, "steps": step, "batch": cfg.batch, "seq_len": cfg.seq_len,
                "corpus_sequences": len(corpus), "head_vocab": 0 if head_ids is None else len(head_ids)}
        if val_rows:
            kl, top1 = evaluate(teacher, draft, eval_batches(corpus, val_rows, cfg.batch), autocast, cfg.loss_chunk)
            info.update(validation_kl=round(kl, 4), validation_top1=round(top1, 4))
            report(f"step {step}: validation (unseen prompts) KL {kl:.3f}, top-1 agreement {top1:.1%}")
        export_draft(draft, teacher, tokenizer, cfg.base or cfg.target, out, cfg.save_dtype, standalone=cfg.standalone,
                     info=info, head_ids=head_ids)

    bar = tqdm(total=cfg.steps, initial=start, desc="distill", unit="step", dynamic_ncols=True)
    ema_loss = ema_agree = None
    tokens_done, t_start = 0, time.perf_counter()
    for step in range(start, cfg.steps):
        ids, mask = batcher.get(step)
        loss, agree, n = train_step(teacher, draft, ids, mask, opt, sched, params, autocast, cfg.loss_chunk)
        loss_v, agree_v = loss.item(), agree.item()           # host sync: once per step, for the progress bar
        ema_loss = loss_v if ema_loss is None else 0.9 * ema_loss + 0.1 * loss_v
        ema_agree = agree_v if ema_agree is None else 0.9 * ema_agree + 0.1 * agree_v
        tokens_done += n
        bar.update(1)
        bar.set_postfix(kl=f"{ema_loss:.3f}", top1=f"{ema_agree:.1%}",
                        tok_s=f"{tokens_done / (time.perf_counter() - t_start):.0f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        stop = step + 1 == cfg.stop_at or (cfg.time_limit is not None
                                           and time.perf_counter() - t_start > cfg.time_limit)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or stop:
            save_checkpoint(sdir, step + 1, draft, opt, sched)
            export(step + 1)
        if stop:
            report(f"stopped at step {step + 1} of {cfg.steps} (checkpointed; continue with --resume)")
            break
    bar.close()
    if start >= cfg.steps:
        export(start)
    seconds = time.perf_counter() - t_start
    if tokens_done:
        report(f"trained {bar.n - start} steps, {tokens_done / 1e3:.0f}k loss tokens in {seconds:.0f} s "
               f"({tokens_done / seconds:.0f} tok/s on {cfg.device}); KL {ema_loss:.3f}, top-1 agreement {ema_agree:.1%} "
               f"(moving averages over training batches)")
    report(f"draft written to {out} ({exported_bytes(out) / 2**20:.1f} MiB of weights)")
    return out
