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

Triton's own per-model figures (metrics endpoint, summed over the served runs) follow the table:
queue and compute (input + infer + output) microseconds per request of each model; for the ensemble's
postprocessing step a request is one streamed response.

Tiny random models (tests/tiny.py) have no chat template: pass --no-chat. --ignore-eos makes every
request produce exactly --max-tokens tokens on both sides (served: min_length = max_tokens).
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


TRITON_TIMES = ("queue", "compute_input", "compute_infer", "compute_output")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(server) -> dict[str, float]:
    """CPU time (user + system, s) so far of tritonserver, of each model's stub process (by model name)
    and of this process (the in-process engine, or the gRPC client). Under a shared machine's load,
    CPU time per token is steadier than wall time."""
    def cpu(pid) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / TICK
    out = {"tritonserver": cpu(server.proc.pid), "this process": cpu(os.getpid())}
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit() or int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != server.proc.pid:
                continue
            pid, cmd = d.name, (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        model = next((Path(a.decode()).parts[-3] for a in cmd if a.endswith(b"/model.py")), f"pid {pid}")
        out[model] = out.get(model, 0.0) + cpu(pid)
    return out


def triton_counters(metrics_url: str) -> dict[tuple[str, str], float]:
    """(model, what) -> value of Triton's per-model counters: request_success, count, exec_count and the
    *_duration_us sums (queue, compute_input, compute_infer, compute_output)."""
    import urllib.request
    out: dict[tuple[str, str], float] = {}
    for line in urllib.request.urlopen(metrics_url, timeout=5).read().decode().splitlines():
        if not line.startswith("nv_inference_") or 'model="' not in line:
            continue
        name = line.split("{", 1)[0][len("nv_inference_"):].removesuffix("_duration_us")
        model = line.split('model="', 1)[1].split('"', 1)[0]
        out[(model, name)] = out.get((model, name), 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def per_request_us(before: dict, after: dict) -> list[dict]:
    """Per model: requests (successful) in the interval and each time's microseconds per request."""
    rows = []
    for model in sorted({m for m, _ in after}):
        n = after.get((model, "request_success"), 0.0) - before.get((model, "request_success"), 0.0)
        if n <= 0:
            continue
        row = {"model": model, "requests": int(n), "executions": int(after.get((model, "exec_count"), 0.0)
                                                                       - before.get((model, "exec_count"), 0.0))}
        for what in TRITON_TIMES:
            row[f"{what}_us"] = (after.get((model, what), 0.0) - before.get((model, what), 0.0)) / n
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--draft", default="ngram")
    ap.add_argument("--mode", default="sync")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--ks", default="4,0", help="per-request K values to measure (0 = AR)")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=8, help="prompts per measurement (a multiple of each c; the 8 prompts repeat)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on both sides (0 = torch default)")
    ap.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                    help="wrap prompts in the chat template (--no-chat for tiny models without one)")
    ap.add_argument("--ignore-eos", action="store_true", help="every request runs to --max-tokens")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ks = [int(x) for x in args.ks.split(",")]
    cs = [int(x) for x in args.concurrency.split(",")]

    import numpy as np
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
    triton: dict[tuple[int, int], list] = {(k, c): [] for k in ks for c in cs}
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    try:
        for k in ks:
            params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, chat=args.chat, num_draft_tokens=k,
                                    ignore_eos=args.ignore_eos)
            opts = dict(max_tokens=args.max_tokens, temperature=0.0, chat=args.chat, num_draft_tokens=k)
            if args.ignore_eos:
                opts["extra"] = {"min_length": np.array([[args.max_tokens]], np.int32)}

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
                        before = triton_counters(server.metrics_url) if side == "served" else None
                        cpu0 = cpu_seconds(server)
                        rows.append({"side": side, "k": k, "c": c, "rep": rep, **measure(fn, prompts, c)})
                        cpu1 = cpu_seconds(server)
                        rows[-1]["cpu_ms_per_token"] = {w: 1e3 * (cpu1[w] - cpu0.get(w, 0.0)) / rows[-1]["tokens"]
                                                        for w in cpu1}
                        if before is not None:
                            triton[(k, c)].append((before, triton_counters(server.metrics_url)))
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
    print("\nCPU ms per output token (median over repeats; in-process: this process only, served: every process)")
    names = sorted({w for r in rows for w in r["cpu_ms_per_token"]})
    print(f"{'K':>2} {'c':>2} {'side':>10} | " + " ".join(f"{w[:14]:>14}" for w in names) + f" | {'sum':>6}")
    for k in ks:
        for c in cs:
            for side in ("in-process", "served"):
                sel = [r["cpu_ms_per_token"] for r in rows if r["side"] == side and r["k"] == k and r["c"] == c]
                med = {w: statistics.median(x.get(w, 0.0) for x in sel) for w in names}
                if side == "in-process":
                    med = {w: (v if w == "this process" else 0.0) for w, v in med.items()}
                print(f"{k:>2} {c:>2} {side:>10} | " + " ".join(f"{med[w]:>14.3f}" for w in names)
                      + f" | {sum(med.values()):>6.3f}")
    print("\nTriton per model, microseconds per request (postprocessing: per streamed response), over all repeats")
    print(f"{'K':>2} {'c':>2} {'model':>15} {'requests':>8} {'execs':>6} | " + " ".join(f"{w:>14}" for w in TRITON_TIMES))
    per_model = []
    for (k, c), pairs in triton.items():
        before = {key: sum(b.get(key, 0.0) for b, _ in pairs) for key in pairs[0][1]} if pairs else {}
        after = {key: sum(a.get(key, 0.0) for _, a in pairs) for key in pairs[0][1]} if pairs else {}
        for r in per_request_us(before, after):
            per_model.append({"k": k, "c": c, **r})
            print(f"{k:>2} {c:>2} {r['model']:>15} {r['requests']:>8} {r['executions']:>6} | "
                  + " ".join(f"{r[w + '_us']:>14.0f}" for w in TRITON_TIMES))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "commit": commit, "rows": rows, "table": table,
                                               "triton": per_model, "startup_s": startup, "load": [load0, load1]},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
