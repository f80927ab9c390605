#!/usr/bin/env python3
"""Served (Triton ensemble, gRPC streaming) vs in-process (LLM) tokens/s and TTFT, in one run.

    .venv/bin/python bench/triton_vs_inprocess.py --target smollm2-135m --max-tokens 64

Same engine settings, prompts and greedy decoding on both sides; the in-process engine is freed
before the server starts so they never share the CPU. Concurrency c sends c requests at once
(c = 1: one after the other). tok/s = all output tokens / wall time from the first send to the
last token; TTFT = send -> first token (in-process: arrival -> first token). Per-request K is
varied with num_draft_tokens (0 = autoregressive) on one engine/server. Both sides use --threads
torch threads (on a busy 2-core VM, 2 spinning OpenMP threads ran 10x slower than 1).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
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


def _row(side, c, k, n_tokens, wall, ttfts):
    return {"side": side, "concurrency": c, "num_draft_tokens": k, "tokens": n_tokens, "wall_s": wall,
            "tok_s": n_tokens / wall, "ttft_ms_median": 1e3 * statistics.median(ttfts),
            "ttft_ms_max": 1e3 * max(ttfts)}


def in_process(args, ks, concurrencies) -> list[dict]:
    import torch

    from specdec import LLM, SamplingParams
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(args.target, draft=args.draft, mode=args.mode, k=args.k, max_batch_size=16)
    rows = []
    for k in ks:
        params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, chat=True, num_draft_tokens=k)
        llm.generate(PROMPTS[:1], params)                                   # warm-up
        for c in concurrencies:
            prompts = PROMPTS[:args.requests]
            t0, tokens, ttfts = time.perf_counter(), 0, []
            for i in range(0, len(prompts), c):
                outs = llm.generate(prompts[i:i + c], params)
                tokens += sum(len(o.token_ids) for o in outs)
                ttfts += [o.stats["ttft_s"] for o in outs]
            rows.append(_row("in-process", c, k, tokens, time.perf_counter() - t0, ttfts))
            print(rows[-1], file=sys.stderr)
    return rows


def served(args, ks, concurrencies) -> tuple[list[dict], float]:
    import stream_client as sc

    from specdec.triton.launcher import Ports, TritonServer
    from specdec.triton.repository import write_repository
    from specdec.triton.settings import Settings
    settings = Settings(target=args.target, draft=args.draft or "", mode=args.mode, k=args.k, cpu_threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="specdec-bench-"))
    server = TritonServer(write_repository(work / "repo", settings), work, ports=Ports.free())
    t0 = time.perf_counter()
    server.start()
    server.wait_ready(600)
    startup = time.perf_counter() - t0
    rows = []
    try:
        for k in ks:
            opts = dict(max_tokens=args.max_tokens, temperature=0.0, chat=True, num_draft_tokens=k)
            sc.generate(server.grpc_url, PROMPTS[:1], **opts)                  # warm-up
            for c in concurrencies:
                prompts = PROMPTS[:args.requests]
                t0, tokens, ttfts = time.perf_counter(), 0, []
                for i in range(0, len(prompts), c):
                    res = sc.generate(server.grpc_url, prompts[i:i + c], **opts)
                    assert all(r.error is None for r in res), [r.error for r in res]
                    tokens += sum(r.tokens for r in res)
                    ttfts += [r.ttft_s for r in res]
                rows.append(_row("served", c, k, tokens, time.perf_counter() - t0, ttfts))
                print(rows[-1], file=sys.stderr)
    finally:
        server.stop()
    return rows, startup


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
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides (0 = torch default)")
    ap.add_argument("--served-first", action="store_true", help="measure the server first (load drift check)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ks = [int(x) for x in args.ks.split(",")]
    cs = [int(x) for x in args.concurrency.split(",")]
    load0 = os.getloadavg()
    if args.served_first:
        rows, startup = served(args, ks, cs)
        rows += in_process(args, ks, cs)
    else:
        rows = in_process(args, ks, cs)
        gc.collect()
        srows, startup = served(args, ks, cs)
        rows += srows
    print(f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}; server ready in {startup:.1f} s")
    print(f"{'K':>2} {'c':>2} | {'in-process tok/s':>16} {'TTFT ms':>8} | {'served tok/s':>12} {'TTFT ms':>8} | served/in-process")
    for k in ks:
        for c in cs:
            a = next(r for r in rows if r["side"] == "in-process" and r["concurrency"] == c and r["num_draft_tokens"] == k)
            b = next(r for r in rows if r["side"] == "served" and r["concurrency"] == c and r["num_draft_tokens"] == k)
            print(f"{k:>2} {c:>2} | {a['tok_s']:>16.1f} {a['ttft_ms_median']:>8.0f} | {b['tok_s']:>12.1f} "
                  f"{b['ttft_ms_median']:>8.0f} | {b['tok_s'] / a['tok_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "startup_s": startup}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
