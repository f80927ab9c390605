"""Time one distillation training step per student variant, and show where a step's GPU time goes.

    python3 bench/gpu/distill_step.py [--target synthetic:smollm2-135m] [--batch 32,64] [--steps 20]

Random-token batches shaped like the SmolLM2 corpus (sequences of 200-320 tokens, the first ~60 a
prompt without loss), a random-weight teacher by default (the cost does not depend on the weights).
Variants: the 4-layer Llama draft with the KL over the whole vocabulary (what `specdec distill` did
before) or over the exported head's 8193 rows, and the EAGLE head (3 depths, 8193 rows). Prints
ms/step and loss tokens/s per variant and batch, then the top CUDA kernels of one step of --profile.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch

from specdec.distill.batches import Batcher
from specdec.distill.config import DistillConfig
from specdec.distill.data import Corpus
from specdec.distill.model import load_teacher, trainable
from specdec.distill.train import build_student, train_step


def random_corpus(n: int, vocab: int, seed: int = 0) -> Corpus:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(200, 321, (n,), generator=g).tolist()
    seqs = [torch.randint(0, vocab, (L,), generator=g).tolist() for L in lens]
    return Corpus(seqs, [60] * n)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def variant(name: str, teacher, corpus, batch: int, head_ids, steps: int, profile: bool, device: str):
    arch, vocab = name.split("/")
    cfg = DistillConfig(out=tempfile.mkdtemp(), target="synthetic", arch=arch, batch=batch, seq_len=320,
                        device=device, steps=10_000, head_vocab=8192)
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    student = build_student(cfg, teacher, None, autocast, head_ids if vocab == "rows" else None)
    params = [p for _, p in trainable(student.module)]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batcher = Batcher(corpus, list(range(len(corpus))), batch, 0)
    for s in range(3):
        train_step(student, *batcher.get(s), opt, sched, params)
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0, tokens = time.perf_counter(), 0
    for s in range(3, 3 + steps):
        loss, agree, n = train_step(student, *batcher.get(s), opt, sched, params)
        loss.item()                                      # the loop's one host sync per step
        tokens += n
    sync(device)
    dt = time.perf_counter() - t0
    row = (name, batch, 1e3 * dt / steps, tokens / dt, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)
    table = None
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof
        with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for s in range(2):
                train_step(student, *batcher.get(s), opt, sched, params)[0].item()
            sync(device)
        table = p.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60)
    del student, opt
    if cuda:
        torch.cuda.empty_cache()
    return row, table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="synthetic:smollm2-135m")
    ap.add_argument("--batch", default="32,64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--variants", default="llama/full,llama/rows,eagle/rows")
    ap.add_argument("--profile", default="llama/rows", help="variant profiled (at the first batch size)")
    ap.add_argument("--device", default="cuda:0", help="cpu: a smoke test of this script")
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    if a.target.startswith("synthetic:"):                # shapes only: random weights, no files
        from transformers import AutoConfig, AutoModelForCausalLM
        from specdec.models.registry import resolve
        teacher = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve(a.target)), dtype=dtype)
        teacher = teacher.to(a.device).eval().requires_grad_(False)
    else:
        teacher, _ = load_teacher(a.target, torch.device(a.device), str(dtype).removeprefix("torch."))
    V = teacher.config.vocab_size
    corpus = random_corpus(2048, V)
    head_ids = torch.arange(8193)
    rows, tables = [], []
    for b in [int(x) for x in a.batch.split(",")]:
        for name in a.variants.split(","):
            with contextlib.suppress(torch.cuda.OutOfMemoryError):
                row, table = variant(name, teacher, corpus, b, head_ids, a.steps,
                                     profile=name == a.profile and not tables, device=a.device)
                rows.append(row)
                print(f"{row[0]:12s} b={row[1]:3d} {row[2]:8.1f} ms/step {row[3] / 1e3:8.1f}k loss tok/s "
                      f"peak {row[4]:.1f} GiB", flush=True)
                if table:
                    tables.append((name, b, table))
    for name, b, table in tables:
        print(f"\n== {name} b={b}: top CUDA kernels over 2 steps\n{table}")
    print("\n| variant | batch | ms/step | loss tok/s | peak GiB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3] / 1e3:.1f}k | {r[4]:.1f} |")


if __name__ == "__main__":
    main()
