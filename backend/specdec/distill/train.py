"""The distillation loop: minimise KL(target || draft) over the target's own completions.

Two students (``cfg.arch``), one loop:

* "llama": the target cut to ``layers`` decoder layers (distill/model.py). Per step a batch of corpus
  rows ``input_ids`` [B, L] goes through the frozen teacher (no grad) and the draft; both final hidden
  states are gathered at the loss positions ([N, H], N = loss tokens in the batch), and the loss is
  the mean over those positions of KL(softmax(teacher logits) || softmax(draft logits)) over the full
  vocabulary (distill/train_loss.py).
* "eagle": an EAGLE head (models/eagle.py) fed the teacher's features, trained on the same KL at
  ``eagle_steps`` draft depths plus a feature regression (distill/eagle.py).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..models.draft_head import frequent_tokens
from ..models.loader import DTYPES, load_tokenizer
from .checkpoint import load_checkpoint, save_checkpoint, save_config, state_dir
from .config import DistillConfig
from .batches import Batcher, eval_batches, split_by_prompt
from .data import load_or_generate
from .eagle import eagle_batch_loss, export_eagle, head_rows, init_eagle
from .export import export_draft, exported_bytes
from .model import init_draft, load_teacher, num_params, trainable
from .train_loss import chunked_kl, kl_sum, llama_batch_loss  # noqa: F401  (kl_sum: re-exported)

log = logging.getLogger(__name__)

H100_BF16_FLOPS = 989e12
ASSUMED_MFU = 0.25


@dataclass
class Student:
    """What is trained: its module, its loss on a batch -> (mean loss, top-1 agreement, loss tokens), and
    how it is written out (out folder, info dict, LM-head token ids or None)."""

    module: torch.nn.Module
    loss: Callable
    export: Callable
    layers_params: int                     # parameters of its decoder layers (for the time estimate)


def build_student(cfg: DistillConfig, teacher, tokenizer, autocast, head_ids=None) -> Student:
    """head_ids: the exported LM head's tokens (an EAGLE head also trains over those only)."""
    base = cfg.base or cfg.target
    save_dtype = DTYPES[cfg.save_dtype]
    if cfg.arch == "eagle":
        head = init_eagle(teacher, cfg.layers, cfg.seq_len + 1)
        rows = head_rows(teacher, head_ids)

        def loss(ids, mask):
            return eagle_batch_loss(teacher, head, ids, mask, autocast, cfg.loss_chunk, cfg.eagle_steps,
                                    cfg.feature_weight, rows)

        def export(out, info, head_ids):
            export_eagle(head, teacher, tokenizer, base, out, save_dtype, info, head_ids)
        return Student(head, loss, export, num_params(head.layers) + num_params(head.fc))
    draft = init_draft(teacher, cfg.layers, cfg.train_embeddings, cfg.init_from)
    rows = None if cfg.train_embeddings else head_rows(teacher, head_ids)

    def loss(ids, mask):
        return llama_batch_loss(teacher, draft, ids, mask, autocast, cfg.loss_chunk, rows)

    def export(out, info, head_ids):
        export_draft(draft, teacher, tokenizer, base, out, cfg.save_dtype, standalone=cfg.standalone, info=info,
                     head_ids=head_ids)
    return Student(draft, loss, export, num_params(draft.model.layers))


def flops_per_token(teacher_layers: int, draft_layers: int, head: int, head_trained: bool) -> int:
    """Approximate matmul FLOPs per loss token (attention scores and padding ignored): teacher forward;
    draft forward + backward, the LM head without weight gradients unless trained; one recomputed head."""
    teacher = 2 * (teacher_layers + head)
    draft = 6 * draft_layers + (6 if head_trained else 4) * head
    return teacher + draft + 2 * head


def lr_lambda(cfg: DistillConfig, time_fraction=None):
    """Linear warmup, then cosine decay to 10 % over the steps; with ``time_fraction`` (schedule "time":
    the share of --time-limit spent so far in this invocation) over whichever runs out first."""
    warm = cfg.warmup_steps

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, cfg.steps - warm)
        if time_fraction is not None:
            t = max(t, time_fraction())
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def train_step(student: Student, ids, mask, opt, sched, params):
    """One optimizer step; returns the mean loss per loss token and the top-1 agreement (device
    scalars) and the number of loss tokens."""
    loss, agree, n = student.loss(ids, mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach(), agree, n


@torch.no_grad()
def evaluate(student: Student, batches) -> tuple[float, float]:
    """Mean loss per loss token and top-1 agreement over ``batches`` (validation: unseen prompts)."""
    loss_total, agree_total, n_total = 0.0, 0.0, 0
    for ids, mask in batches:
        loss, agree, n = student.loss(ids, mask)
        loss_total, agree_total, n_total = loss_total + float(loss) * n, agree_total + float(agree) * n, n_total + n
    return loss_total / max(n_total, 1), agree_total / max(n_total, 1)


def describe(cfg: DistillConfig, corpus, batcher, teacher, student: Student, start: int) -> list[str]:
    """The run in two lines: what is trained on what, and a rough H100 time for the training part."""
    head = teacher.config.vocab_size * teacher.config.hidden_size
    per_step = corpus.num_completion_tokens / len(corpus) * cfg.batch          # loss tokens per step (mean)
    tokens = per_step * (cfg.steps - start)
    heads = cfg.eagle_steps if cfg.arch == "eagle" else 1                       # LM-head passes per loss token
    flops = tokens * flops_per_token(num_params(teacher.model.layers), student.layers_params, head * heads,
                                     cfg.train_embeddings)
    what = (f"EAGLE head ({cfg.layers} layer(s), {cfg.eagle_steps} training depths)" if cfg.arch == "eagle"
            else f"{cfg.layers}-layer draft")
    return [f"distill: {what} of {cfg.target}, {num_params(student.module, True) / 1e6:.1f}M trainable params; "
            f"corpus {len(corpus)} seqs ({len(batcher.rows)} train, {len(corpus) - len(batcher.rows)} validation), "
            f"{corpus.num_completion_tokens / 1e3:.0f}k loss tokens "
            f"({batcher.per_epoch} steps per epoch, {cfg.steps / batcher.per_epoch:.1f} epochs)",
            f"estimate: {cfg.steps - start} steps x ~{per_step / 1e3:.1f}k loss tokens = {tokens / 1e6:.2f}M tokens, "
            f"{flops / 1e12:.0f} TFLOP -> ~{flops / (H100_BF16_FLOPS * ASSUMED_MFU):.0f} s of training on one H100 "
            f"(bf16 at {ASSUMED_MFU:.0%} of peak), plus corpus generation"]


def lm_head_tokens(cfg: DistillConfig, corpus, teacher, tokenizer, report):
    """The tokens the exported draft's LM head keeps (None: the whole vocabulary)."""
    if not 0 < cfg.head_vocab < teacher.config.vocab_size:
        return None
    eos = teacher.config.eos_token_id
    always = [t for t in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]
              if t is not None]
    head_ids, coverage = frequent_tokens(corpus.sequences, corpus.prompt_lens, cfg.head_vocab,
                                         teacher.config.vocab_size, always)
    report(f"draft LM head: the {len(head_ids)} most frequent tokens, {coverage:.2%} of the corpus's completion tokens")
    return head_ids


def train(cfg: DistillConfig, report=log.info) -> Path:
    """Run (or resume) the distillation; ``report`` receives the summary lines (the command prints them).

    The progress bar's tok/s counts loss tokens (completion positions) per second of training."""
    out = Path(cfg.out)
    sdir = state_dir(out)
    save_config(cfg, sdir)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)

    corpus = load_or_generate(cfg, sdir / "corpus.pt", report)
    train_rows, val_rows = split_by_prompt(corpus)
    batcher = Batcher(corpus, train_rows, cfg.batch, cfg.seed)
    teacher, folder = load_teacher(cfg.target, device, cfg.compute_dtype)
    tokenizer = load_tokenizer(folder)
    autocast = (torch.autocast(device.type, dtype=DTYPES[cfg.compute_dtype])
                if cfg.compute_dtype != "float32" else contextlib.nullcontext())
    head_ids = lm_head_tokens(cfg, corpus, teacher, tokenizer, report)
    student = build_student(cfg, teacher, tokenizer, autocast, head_ids)
    params = [p for _, p in trainable(student.module)]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    clock = {"t0": time.perf_counter()}                    # reset when training starts (below)
    time_fraction = None
    if cfg.schedule == "time":
        time_fraction = lambda: (time.perf_counter() - clock["t0"]) / cfg.time_limit   # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, time_fraction))
    start = load_checkpoint(sdir, student.module, opt, sched)
    if start:
        log.info("resuming at step %d of %d", start, cfg.steps)
    for line in describe(cfg, corpus, batcher, teacher, student, start):
        report(line)

    def export(step: int) -> None:
        info = {"target": cfg.target, "arch": cfg.arch, "layers": cfg.layers, "steps": step, "batch": cfg.batch,
                "seq_len": cfg.seq_len, "corpus_sequences": len(corpus),
                "corpus_tokens": corpus.num_completion_tokens, "head_vocab": 0 if head_ids is None else len(head_ids),
                **({"init_from": cfg.init_from} if cfg.init_from else {})}
        if val_rows:
            student.module.eval()
            loss, top1 = evaluate(student, eval_batches(corpus, val_rows, cfg.batch))
            student.module.train()
            info.update(validation_loss=round(loss, 4), validation_top1=round(top1, 4))
            report(f"step {step}: validation (unseen prompts) loss {loss:.3f}, top-1 agreement {top1:.1%}")
        student.export(out, info, head_ids)

    bar = tqdm(total=cfg.steps, initial=start, desc="distill", unit="step", dynamic_ncols=True)
    ema_loss = ema_agree = None
    tokens_done, t_start = 0, time.perf_counter()
    clock["t0"] = t_start
    for step in range(start, cfg.steps):
        ids, mask = batcher.get(step)
        loss, agree, n = train_step(student, ids, mask, opt, sched, params)
        loss_v, agree_v = loss.item(), float(agree)           # host sync: once per step, for the progress bar
        ema_loss = loss_v if ema_loss is None else 0.9 * ema_loss + 0.1 * loss_v
        ema_agree = agree_v if ema_agree is None else 0.9 * ema_agree + 0.1 * agree_v
        tokens_done += n
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.3f}", top1=f"{ema_agree:.1%}",
                        tok_s=f"{tokens_done / (time.perf_counter() - t_start):.0f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        stop = step + 1 == cfg.stop_at or (cfg.time_limit is not None
                                           and time.perf_counter() - t_start > cfg.time_limit)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or stop:
            save_checkpoint(sdir, step + 1, student.module, opt, sched)
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
               f"({tokens_done / seconds:.0f} tok/s on {cfg.device}); loss {ema_loss:.3f}, top-1 agreement "
               f"{ema_agree:.1%} (moving averages over training batches)")
    report(f"draft written to {out} ({exported_bytes(out) / 2**20:.1f} MiB of weights)")
    return out
