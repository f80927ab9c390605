"""Arguments shared by the commands that build an engine."""
from __future__ import annotations

import argparse


def add_engine_args(p: argparse.ArgumentParser, mode_default: str | None = None) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--target", default="smollm2-135m", help="alias, HF folder or .gguf file (default: smollm2-135m)")
    g.add_argument("--draft", default=None, help="draft: folder/alias, 'self:N', 'ngram' (default: the target's default draft)")
    g.add_argument("--mode", default=mode_default, choices=["ar", "sync", "async"], help="decoding mode")
    g.add_argument("--k", type=int, default=4, help="draft tokens per round (K)")
    g.add_argument("--device", default="cpu", help="target device: cpu, cuda:N, mps")
    g.add_argument("--draft-device", default=None, help="draft device (default: the target's)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--max-batch-size", type=int, default=16)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)


def engine_kwargs(args) -> dict:
    return dict(target=args.target, draft=args.draft, mode=args.mode, k=args.k, device=args.device,
                draft_device=args.draft_device, dtype=args.dtype, max_batch_size=args.max_batch_size,
                max_model_len=args.max_model_len, seed=args.seed)
