"""Served (Triton ensemble over HTTP generate_stream) vs in-process tokens/s and TTFT, standard library
only, for machines without tritonclient (the GPU machine). Starts `specdec serve` itself.

python bench/gpu/serve_http.py --target T --draft D --mode sync --target-gpu 0 --draft-gpu 1 [--k 4]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

PROMPTS = ["Explain speculative decoding in two sentences.", "Write a haiku about GPUs.",
           "List three uses of Python.", "What is the capital of France, and why is it famous?",
           "Describe a cat to someone who has never seen one.", "Give me a recipe for pancakes.",
           "What causes the seasons on Earth?", "Summarize the plot of Romeo and Juliet."]


def stream_one(url: str, prompt: str, max_tokens: int, k: int) -> tuple[int, float, float]:
    """(output tokens, TTFT s, end s) of one generate_stream request."""
    body = json.dumps({"text_input": prompt, "max_tokens": max_tokens, "stream": True, "num_draft_tokens": k,
                       "min_length": max_tokens, "return_num_output_tokens": True}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            ev = json.loads(line[5:])
            if "error" in ev:
                raise RuntimeError(ev["error"])
            n = ev.get("num_output_tokens", 0)
            tokens += n[0] if isinstance(n, list) else n
            if first is None and tokens:
                first = time.perf_counter() - t0
    return tokens, first or 0.0, time.perf_counter() - t0


def served(url, c, max_tokens, k, n):
    t0, out = time.perf_counter(), []
    for i in range(0, n, c):
        res = [None] * c
        ths = [threading.Thread(target=lambda j=j: res.__setitem__(j, stream_one(url, PROMPTS[(i + j) % 8], max_tokens, k)))
               for j in range(c)]
        [t.start() for t in ths]
        [t.join() for t in ths]
        out += res
    wall = time.perf_counter() - t0
    return sum(r[0] for r in out) / wall, 1e3 * statistics.median(r[1] for r in out)


def in_process(a, cs, max_tokens, k, n):
    """{c: (tok/s, median TTFT ms)} with one engine on the same devices as the server."""
    import torch

    from specdec import LLM, SamplingParams
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(1)        # a shared CPU: spinning OpenMP threads distort the in-process side
    # In sync mode the in-process draft shares the target's GPU (the engine's usual placement). An
    # in-process draft on the served draft's GPU (draft_device=cuda:1) was tried on 2026-11-22 (run A)
    # and the process died within 27 s with a C++ stack trace from c10::TensorImpl's destructor (the
    # message itself was cut off by the script's tail), so it is no longer the default.
    dd = f"cuda:{a.draft_gpu}" if cuda and (a.mode == "async" or a.inproc_draft_on_draft_gpu) else None
    llm = LLM(a.target, draft=a.draft if a.mode != "ar" else None, mode=a.mode, k=a.k,
              device=f"cuda:{a.target_gpu}" if cuda else "cpu", draft_device=dd,
              dtype="bfloat16" if cuda else "float32", max_batch_size=16, max_model_len=4096)
    where = dd or f"cuda:{a.target_gpu} (shared with the target)"
    print(f"in-process: target cuda:{a.target_gpu}, draft {where}" if cuda else "in-process: CPU", flush=True)
    p = SamplingParams(max_tokens=max_tokens, ignore_eos=True, num_draft_tokens=k)
    out = {}
    for c in cs:
        for i in range(0, n, c):                                   # warm-up on the same prompts: graphs captured
            llm.generate([PROMPTS[(i + j) % 8] for j in range(c)], p)
        t0, tokens, ttfts = time.perf_counter(), 0, []
        for i in range(0, n, c):
            for o in llm.generate([PROMPTS[(i + j) % 8] for j in range(c)], p):
                tokens += len(o.token_ids)
                ttfts.append(o.stats["ttft_s"])
        out[c] = (tokens / (time.perf_counter() - t0), 1e3 * statistics.median(ttfts))
    if hasattr(llm, "close"):
        llm.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", default=None)
    ap.add_argument("--mode", default="sync")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--target-gpu", type=int, default=0)
    ap.add_argument("--draft-gpu", type=int, default=1, help="-1: the draft inside the target model (in_target)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--inproc-draft-on-draft-gpu", action="store_true",
                    help="sync mode: the in-process draft on --draft-gpu too (crashed once on two H200s)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # `timeout` ends us: stop the server (finally) too
    rows = {("in-process", c): v for c, v in in_process(a, (1, 4), a.max_tokens, a.k, a.requests).items()}
    for (w, c), (tps, ttft) in rows.items():
        print(f"measured: {w} c={c} {tps:.1f} tok/s, TTFT {ttft:.1f} ms", flush=True)
    import torch
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
    cmd = [sys.executable, "-m", "specdec.cli", "serve", "--target", a.target, "--mode", a.mode, "--k", str(a.k),
           "--max-model-len", "4096"] + (["--target-gpu", str(a.target_gpu)] if cuda else ["--cpu", "--cpu-threads", "1"])
    if a.mode != "ar" and a.draft:
        cmd += ["--draft", a.draft] + (["--draft-gpu", str(a.draft_gpu)] if cuda and a.draft_gpu >= 0 else [])
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log_lines = []
    threading.Thread(target=lambda: [log_lines.append(x) for x in srv.stdout], daemon=True).start()
    url = "http://127.0.0.1:8000/v2/models/ensemble/generate_stream"
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            try:
                if urllib.request.urlopen("http://127.0.0.1:8000/v2/health/ready", timeout=2).status == 200:
                    break
            except Exception:
                if srv.poll() is not None:                  # it died: say so now, not after the deadline
                    time.sleep(1)
                    raise RuntimeError(f"specdec serve exited with code {srv.returncode}:\n" + "".join(log_lines[-40:]))
                time.sleep(2)
        else:
            raise RuntimeError("server not ready:\n" + "".join(log_lines[-40:]))
        time.sleep(3)                                   # let the separate draft join its channel
        for c in (1, 4):
            served(url, c, a.max_tokens, a.k, a.requests)   # warm-up on the same prompts, as in-process
            rows[("served", c)] = served(url, c, a.max_tokens, a.k, a.requests)
            print(f"measured: served c={c} {rows[('served', c)][0]:.1f} tok/s, TTFT {rows[('served', c)][1]:.1f} ms",
                  flush=True)
    finally:
        os.killpg(srv.pid, signal.SIGINT)
        try:
            srv.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(srv.pid, signal.SIGKILL)
    print("".join(x for x in log_lines if "GPU" in x or "draft" in x.lower())[-1500:])
    logs = [x.split("log:", 1)[1].strip() for x in log_lines if x.strip().startswith("log:")]
    if logs and os.path.exists(logs[0]):                # tritonserver's own log: the draft channel's story
        with open(logs[0], errors="replace") as f:
            keep = [x for x in f if any(w in x.lower() for w in ("draft", "error", "rendezvous", "fallback"))]
        print("tritonserver log (draft/error lines, last 8):\n" + "".join(x[-300:] for x in keep[-8:]))
    print(f"{a.target} mode={a.mode} K={a.k} draft={a.draft} target GPU {a.target_gpu}, draft GPU {a.draft_gpu}")
    print(f"{'where':10} {'c':>2} | {'tok/s':>8} {'TTFT ms':>8}")
    for (w, c), (tps, ttft) in rows.items():
        print(f"{w:10} {c:>2} | {tps:>8.1f} {ttft:>8.1f}")


if __name__ == "__main__":
    main()
