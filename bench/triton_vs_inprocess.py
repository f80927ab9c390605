#!/usr/bin/env python3
"""Served (Triton ensemble, gRPC streaming) vs in-process (LLM) tokens/s and TTFT, in one run.

    .venv/bin/python bench/triton_vs_inprocess.py --target smollm2-135m --max-tokens 64 --repeats 2

Same engine settings, prompts and greedy decoding on both sides. Both are loaded at once (an
idle engine or server uses no CPU) and the measurements alternate in-process / served, so slow
drift in the machine's load hits both alike; each figure is the median over --repeats.
Concurrency c sends c requests at once (c = 1: one after the other). tok/s = output tokens /
wall time from the first send to the last token; TTFT = send -> first token (in-process:
arrival -> first token). Per-request K is set with num_draft_tokens (0 = autoregressive) on
one engine and one server. Both sides use --threads torch threads (on a busy 2-core VM, 2
spinning OpenMP threads ran ~10x slower than 1).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client"))

PROMPTS = ["Explain speculative decoding in two sentences.", "Write a haiku about GPUs.",
           "List three uses of Python.", "What is the capital of France, and why is it famous?",
           "Describe a cat to someone who has never seen one.", "Give me a recipe for pancakes.",
           "What causes the seasons on Earth?", "Summarize the plot of Romeo and Juliet."]


def measure(run_batch, prompts: list[str], c: int) -> dict:
    """run_batch(prompts) -> [(tokens, ttft_s)]; batches of c prompts, one after the other."""
    t0, tokens, ttfts = time.perf_counter(), 0, []
    for i in range(0, len(prompts), c):
        for n, ttft in run_batch(prompts[i:i + c]):
            tokens += n
            ttfts.append(ttft)
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "ttft_ms": 1e3 * statistics.median(ttfts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--draft", default="ngram")
    ap.add_argument("--mode", default="sync")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--ks", default="4,0", help="per-request K values to measure (0 = AR)")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=8, help="prompts per measurement (a multiple of each c)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides (0 = torch default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ks = [int(x) for x in args.ks.split(",")]
    cs = [int(x) for x in args.concurrency.split(",")]

    import stream_client as sc
    import torch

    from specdec import LLM, SamplingParams
    from specdec.triton.launcher import Ports, TritonServer
    from specdec.triton.repository import write_repository
    from specdec.triton.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(args.target, draft=args.draft, mode=args.mode, k=args.k, max_batch_size=16)
    settings = Settings(target=args.target, draft=args.draft or "", mode=args.mode, k=args.k, cpu_threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="specdec-bench-"))
    server = TritonServer(write_repository(work / "repo", settings), work, ports=Ports.free())
    t0 = time.perf_counter()
    server.start()
    server.wait_ready(600)
    startup = time.perf_counter() - t0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    load0 = os.getloadavg()
    rows = []
    prompts = PROMPTS[:args.requests]
    try:
        for k in ks:
            params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, chat=True, num_draft_tokens=k)
            opts = dict(max_tokens=args.max_tokens, temperature=0.0, chat=True, num_draft_tokens=k)

            def local(batch):
                return [(len(o.token_ids), o.stats["ttft_s"]) for o in llm.generate(batch, params)]

            def remote(batch):
                res = sc.generate(server.grpc_url, batch, **opts)
                assert all(r.error is None for r in res), [r.error for r in res]
                return [(r.tokens, r.ttft_s) for r in res]
            local(prompts[:1]), remote(prompts[:1])                                  # warm-up
            for rep in range(args.repeats):
                for c in cs:
                    for side, fn in (("in-process", local), ("served", remote)):
                        rows.append({"side": side, "k": k, "c": c, "rep": rep, **measure(fn, prompts, c)})
                        print(rows[-1], file=sys.stderr, flush=True)
    finally:
        server.stop()
    load1 = os.getloadavg()
    print(f"\n{platform.node()}: {os.cpu_count()} CPUs, {args.threads} torch thread(s) per side; commit {commit}; "
          f"load average {load0[0]:.1f} -> {load1[0]:.1f}; server ready in {startup:.1f} s; "
          f"{args.requests} requests x {args.max_tokens} tokens, median of {args.repeats}")
    print(f"{'K':>2} {'c':>2} | {'in-process tok/s':>16} {'TTFT ms':>8} | {'served tok/s':>12} {'TTFT ms':>8} | served/in-process")
    table = []
    for k in ks:
        for c in cs:
            med = {}
            for side in ("in-process", "served"):
                sel = [r for r in rows if r["side"] == side and r["k"] == k and r["c"] == c]
                med[side] = (statistics.median(r["tok_s"] for r in sel), statistics.median(r["ttft_ms"] for r in sel))
            a, b = med["in-process"], med["served"]
            table.append({"k": k, "c": c, "in_process_tok_s": a[0], "in_process_ttft_ms": a[1],
                          "served_tok_s": b[0], "served_ttft_ms": b[1]})
            print(f"{k:>2} {c:>2} | {a[0]:>16.1f} {a[1]:>8.0f} | {b[0]:>12.1f} {b[1]:>8.0f} | {b[0] / a[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "commit": commit, "rows": rows, "table": table,
                                               "startup_s": startup, "load": [load0, load1]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
