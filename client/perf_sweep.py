#!/usr/bin/env python3
"""Run perf_analyzer against the streaming ensemble over a concurrency range; report tokens/s.

    python client/perf_sweep.py -u localhost:8001 --concurrency 1:4:1 --max-tokens 64

perf_analyzer drives the decoupled ensemble (``-i grpc --async --streaming``) with the prompts of
``--input-data`` (default: client/perf_inputs.json) and writes every request's response
timestamps and outputs to ``--profile-export-file``. Its own "throughput" counts requests and its
latency is the first response, so tokens are counted here from ``num_output_tokens`` of each
response (a speculative round carries several tokens), not from the number of responses.

Needs tritonclient==2.48.0's bin/perf_analyzer (or one on PATH), Debian's libb64-0d and a
libcudart.so.12 (pip nvidia-cuda-runtime-cu12; found automatically).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def find_perf_analyzer(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    near = Path(sys.executable).parent / "perf_analyzer"
    found = str(near) if near.exists() else shutil.which("perf_analyzer")
    if not found:
        raise FileNotFoundError("perf_analyzer not found: pip install 'tritonclient[grpc]==2.48.0' "
                                "(its wheel carries bin/perf_analyzer) or use the -py3-sdk image")
    return found


def perf_env() -> dict:
    """LD_LIBRARY_PATH with a libcudart.so.12 (perf_analyzer links it even for CPU servers)."""
    env = dict(os.environ)
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            lib = Path(root) / "cuda_runtime" / "lib"
            if (lib / "libcudart.so.12").exists():
                env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
                break
    return env


FILLER = ("the river ran past old stone mills where workers once ground grain for towns along the valley and "
          "traders carried flour by cart to markets in the hills while children watched boats drift under bridges").split()


def long_context(words: int, seed: int) -> str:
    """A deterministic passage of ``words`` words (a long-context prompt; ~1.3 tokens per word for Llama
    tokenizers), different for each ``seed`` so that no two prompts share a prefix."""
    n = len(FILLER)
    return " ".join(FILLER[(i * (seed + 3) + seed) % n] for i in range(words))


def write_input_data(src: Path, dest: Path, max_tokens: int | None, num_draft_tokens: int | None,
                     chat: bool | None, ignore_eos: bool = False, prompt_words: int = 0) -> Path:
    data = json.loads(src.read_text())
    for i, entry in enumerate(data["data"]):
        if prompt_words > 0:                  # long contexts: a passage first, the question after it
            entry["text_input"] = [long_context(prompt_words, i) + "\n\n" + entry["text_input"][0]]
        if max_tokens is not None:
            entry["max_tokens"] = [max_tokens]
        if ignore_eos:                        # min_length >= max_tokens: every request runs to max_tokens
            entry["min_length"] = entry["max_tokens"]
        if num_draft_tokens is not None:
            entry["num_draft_tokens"] = [num_draft_tokens]
        if chat is not None:
            entry["apply_chat_template"] = [chat]
    dest.write_text(json.dumps(data, indent=1))
    return dest


def _uint(value) -> int | None:
    """A UINT32 response output as perf_analyzer exports it: raw little-endian bytes in a string."""
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str) and len(value) == 4 and all(ord(c) < 256 for c in value):
        return int.from_bytes(bytes(ord(c) for c in value), "little")
    return None


def summarize(export: dict) -> list[dict]:
    """Per concurrency: requests/s, output tokens/s, TTFT and latency from the profile export."""
    rows = []
    for exp in export["experiments"]:
        reqs = [r for r in exp["requests"] if r.get("response_timestamps")]
        if not reqs:
            rows.append({"concurrency": exp["experiment"]["value"], "requests": 0})
            continue
        start = min(r["timestamp"] for r in reqs)
        end = max(r["response_timestamps"][-1] for r in reqs)
        tokens, unknown, itl = 0, 0, []
        for r in reqs:
            times = r["response_timestamps"]
            for i, out in enumerate(r.get("response_outputs", [])):
                n = _uint(out.get("num_output_tokens", ""))
                if n is None:
                    unknown += 1
                    continue
                tokens += n
                if i > 0 and n > 0:           # inter-token latency: a response's gap spread over its tokens
                    itl += [(times[i] - times[i - 1]) / 1e6 / n] * n
        seconds = (end - start) / 1e9
        ttft = sorted((r["response_timestamps"][0] - r["timestamp"]) / 1e6 for r in reqs)
        lat = sorted((r["response_timestamps"][-1] - r["timestamp"]) / 1e6 for r in reqs)
        rows.append({
            "concurrency": exp["experiment"]["value"], "requests": len(reqs), "seconds": seconds,
            "requests_per_s": len(reqs) / seconds, "output_tokens": tokens, "output_tokens_per_s": tokens / seconds,
            "responses": sum(len(r["response_timestamps"]) for r in reqs),
            "ttft_ms_p50": ttft[len(ttft) // 2], "latency_ms_p50": lat[len(lat) // 2],
            "tokens_per_request": tokens / len(reqs), "uncounted_responses": unknown,
            "itl_ms_p50": _pct(itl, 50), "itl_ms_p99": _pct(itl, 99),
        })
    return rows


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def print_table(rows: list[dict]) -> None:
    print(f"{'conc':>4} {'reqs':>5} {'req/s':>7} {'out tok/s':>10} {'tok/req':>8} {'resp/req':>8} "
          f"{'TTFT p50 ms':>12} {'lat p50 ms':>11} {'ITL p50/p99 ms':>15}")
    for r in rows:
        if not r["requests"]:
            print(f"{r['concurrency']:>4} {'0':>5}  (no completed requests)")
            continue
        print(f"{r['concurrency']:>4} {r['requests']:>5} {r['requests_per_s']:>7.2f} {r['output_tokens_per_s']:>10.1f} "
              f"{r['tokens_per_request']:>8.1f} {r['responses'] / r['requests']:>8.1f} {r['ttft_ms_p50']:>12.0f} "
              f"{r['latency_ms_p50']:>11.0f} {_fmt(r['itl_ms_p50'])}/{_fmt(r['itl_ms_p99']):<7}")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def run(args) -> int:
    pa = find_perf_analyzer(args.perf_analyzer)
    workdir = Path(tempfile.mkdtemp(prefix="specdec-perf-"))
    data = write_input_data(Path(args.input_data), workdir / "inputs.json", args.max_tokens, args.num_draft_tokens,
                            None if args.chat is None else args.chat == "on", args.ignore_eos, args.prompt_words)
    export = Path(args.profile_export_file or workdir / "profile.json")
    cmd = [pa, "-m", args.model, "-i", "grpc", "-u", args.url, "--async", "--streaming",
           "--input-data", str(data), "--concurrency-range", args.concurrency,
           "--measurement-mode", "count_windows", "--measurement-request-count", str(args.requests_per_window),
           "--stability-percentage", str(args.stability_percentage), "--max-trials", str(args.max_trials),
           "--profile-export-file", str(export)]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=perf_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=args.timeout)
    log = proc.stdout
    if args.verbose or proc.returncode != 0:
        print(log, file=sys.stderr)
    if proc.returncode != 0:
        print(f"perf_analyzer failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    errors = [line for line in log.splitlines() if "error" in line.lower() or "failed" in line.lower()]
    rows = summarize(json.loads(export.read_text()))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": cmd, "rows": rows, "errors": errors}, indent=1))
    if errors:
        print("perf_analyzer reported:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-u", "--url", default="localhost:8001", help="gRPC endpoint")
    ap.add_argument("-m", "--model", default="ensemble")
    ap.add_argument("--concurrency", default="1:4:1", help="start:end:step (perf_analyzer --concurrency-range)")
    ap.add_argument("--input-data", default=str(HERE / "perf_inputs.json"))
    ap.add_argument("--max-tokens", type=int, default=None, help="override max_tokens of every prompt")
    ap.add_argument("--num-draft-tokens", type=int, default=None, help="override K (0 = autoregressive)")
    ap.add_argument("--chat", choices=["on", "off"], default=None, help="override apply_chat_template")
    ap.add_argument("--ignore-eos", action="store_true", help="min_length = max_tokens: exactly max_tokens per request")
    ap.add_argument("--prompt-words", type=int, default=0,
                    help="put a passage of this many words before every prompt (long contexts: 1600 words ~ 2048 tokens)")
    ap.add_argument("--requests-per-window", type=int, default=8)
    ap.add_argument("--stability-percentage", type=float, default=999, help="999 = accept the first windows")
    ap.add_argument("--max-trials", type=int, default=3)
    ap.add_argument("--profile-export-file", default=None)
    ap.add_argument("--json", default=None, help="write the summary rows here")
    ap.add_argument("--perf-analyzer", default=None)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("-v", "--verbose", action="store_true", help="print perf_analyzer's own report")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
