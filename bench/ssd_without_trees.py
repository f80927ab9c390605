"""Async (SSD) with the build rule forced to "no tree" against sync, same engine settings, on CPU or GPU:
what the async machinery costs by itself when every round drafts like sync (the JIT path, the shadow fork,
the round bookkeeping). Prints wall ms of one timed generate() after a warm-up one, and the draft core's
counters.

    python bench/ssd_without_trees.py [--device cpu] [--target synthetic:llama-tiny] [--b 8] [--prompt-len 128]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import torch  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402
from specdec.spec import adaptive  # noqa: E402


def timed(mode: str, a, prompts) -> float:
    llm = LLM(a.target, draft=a.target, mode=mode, k=a.k, device=a.device,
              dtype="float32" if a.device == "cpu" else "bfloat16", max_batch_size=a.b,
              max_model_len=a.prompt_len + a.new_tokens + 64)
    p = SamplingParams(max_tokens=a.new_tokens, ignore_eos=True)
    llm.generate(prompts, p)                                   # warm-up: same shapes
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    llm.generate(prompts, p)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--target", default="synthetic:llama-tiny")
    ap.add_argument("--b", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    a = ap.parse_args()
    if a.device == "cpu":
        torch.set_num_threads(1)
    rng = random.Random(0)
    prompts = [[rng.randrange(500) for _ in range(a.prompt_len)] for _ in range(a.b)]
    sync_ms = timed("sync", a, prompts)
    adaptive.BuildRule.build = lambda self, *args, **kw: False   # every async round drafts like sync
    async_ms = timed("async", a, prompts)
    print(f"{a.target} on {a.device}, b={a.b}, K={a.k}, prompts {a.prompt_len}, {a.new_tokens} new tokens each "
          f"(draft = target)")
    print(f"sync {sync_ms:.0f} ms | async, no tree built {async_ms:.0f} ms | async / sync time {async_ms / sync_ms:.2f}")


if __name__ == "__main__":
    main()
