#!/usr/bin/env python3
"""Soak a running `specdec serve` with perf_analyzer; check failures, RSS and KV-pool usage over time.

    python client/load_test.py -u 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics --minutes 5

The run is ``--minutes`` cycles of ``--cycle-s`` seconds (default 60); each cycle drives the
streaming ensemble with perf_analyzer at every concurrency of ``--levels`` (default 1,2,4,8,16,32)
for an equal share of the cycle, so the first and the last minute see the same load. Meanwhile a
sampler reads the server's metrics port (``specdec_kv_*``, ``specdec_active_requests``,
``nv_inference_request_failure``) and the RSS of the tritonserver process tree (its Python stubs
and the draft worker included) every ``--sample-s``. The report gives, per minute, requests,
tokens, failed requests, RSS and KV blocks in use, and compares the first minute with the last.
With ``--overload N`` it then opens capacity + N streams at once and checks that exactly the N
extra ones get UNAVAILABLE at once.

Needs perf_analyzer (see perf_sweep.py), tritonclient and psutil. The server's pid is found from
the gRPC port (``--pid`` to give it). Exit code 0 only if no request failed below the limit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OVERLOAD_TOKENS = 384           # at least this many tokens per overload stream (128 let the first streams finish
                                # before a slow client had sent the last ones: no refusals, 2026-12-07)
sys.path.insert(0, str(HERE))
from perf_sweep import find_perf_analyzer, perf_env, summarize, write_input_data  # noqa: E402


def scrape(url: str) -> dict[str, float]:
    """specdec_* metrics (label sets summed) and the ensemble's nv_inference_request_{success,failure}."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{")[0].split()[0] if line else ""
        if name.startswith("specdec_") or (name.startswith("nv_inference_request_") and 'model="ensemble"' in line):
            out[name] = out.get(name, 0.0) + float(line.split()[-1])
    return out


def settle(url: str, timeout_s: float = 60.0) -> dict[str, float]:
    """Metrics once no request is active (the last streams of a load may still be draining), or after
    timeout_s; the KV pool is then expected back at its idle count (every block free)."""
    deadline = time.time() + timeout_s
    m = scrape(url)
    while m.get("specdec_active_requests", 0) > 0 and time.time() < deadline:
        time.sleep(0.5)
        m = scrape(url)
    return m


def find_server(grpc_url: str) -> int:
    import psutil
    port = grpc_url.rsplit(":", 1)[-1]
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("tritonserver") and f"--grpc-port={port}" in cmd:
            return p.pid
    raise RuntimeError(f"no tritonserver with --grpc-port={port} found; pass --pid")


def tree_rss(pid: int) -> float:
    """RSS of a process and all its descendants, MiB."""
    import psutil
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


class Sampler(threading.Thread):
    def __init__(self, metrics_url: str, pid: int, every_s: float):
        super().__init__(daemon=True)
        self.metrics_url, self.pid, self.every_s = metrics_url, pid, every_s
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            try:
                m = scrape(self.metrics_url)
                self.samples.append({"t": t, "rss_mib": tree_rss(self.pid), **m})
            except Exception as e:         # keep sampling; a missed sample is not a failure
                print(f"sample failed: {e}", file=sys.stderr)
            self.stop.wait(self.every_s)


def run_level(pa: str, args, data: Path, concurrency: int, seconds: float, export: Path) -> tuple[int, str]:
    interval_ms = max(1000, int(1000 * seconds / 3))        # 3 windows: perf_analyzer's stability check
    cmd = [pa, "-m", args.model, "-i", "grpc", "-u", args.url, "--async", "--streaming", "--input-data", str(data),
           "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-mode", "time_windows",
           "--measurement-interval", str(interval_ms), "--stability-percentage", "999", "--max-trials", "3",
           "--profile-export-file", str(export)]
    proc = subprocess.run(cmd, env=perf_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=seconds * 4 + 300)
    return proc.returncode, proc.stdout


def overload(args, metrics_url: str) -> dict:
    """Open capacity + N streams at once (from the metric specdec_max_active_requests)."""
    import stream_client as sc
    cap = int(scrape(metrics_url)["specdec_max_active_requests"])
    n = cap + args.overload
    # long enough (EOS suppressed by min_length) that none finishes while the burst is still being sent:
    # short requests on a fast machine free their slots early and the refusals would not come
    tokens = max(args.max_tokens, OVERLOAD_TOKENS)
    inputs = [sc.make_inputs(f"overload {i}", tokens, chat=False, extra={"min_length": np.array([[tokens]], np.int32)})
              for i in range(n)]
    t0 = time.perf_counter()
    results = sc.generate(args.url, [""] * n, inputs=inputs, timeout_s=1800)
    refused = [r for r in results if r.error and "UNAVAILABLE" in r.error]
    other = [r.error for r in results if r.error and "UNAVAILABLE" not in r.error]
    return {"capacity": cap, "sent": n, "refused_unavailable": len(refused), "other_errors": other[:5],
            "completed": sum(1 for r in results if r.error is None),
            "max_refusal_s": max((r.t_end - r.t_send for r in refused), default=None),
            "wall_s": time.perf_counter() - t0}


def _minute(rows: list[dict]) -> dict:
    if not rows:
        return {}
    used = [r["specdec_kv_total_blocks"] - r["specdec_kv_free_blocks"] for r in rows]
    rss = [r["rss_mib"] for r in rows]
    return {"samples": len(rows), "rss_mib_mean": statistics.fmean(rss), "rss_mib_max": max(rss),
            "kv_used_mean": statistics.fmean(used), "kv_used_max": max(used),
            "kv_total": rows[-1]["specdec_kv_total_blocks"],
            "active_max": max(r["specdec_active_requests"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-u", "--url", default="127.0.0.1:8001", help="gRPC endpoint")
    ap.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics")
    ap.add_argument("-m", "--model", default="ensemble")
    ap.add_argument("--minutes", type=float, default=5.0, help="how long: this many cycles of --cycle-s")
    ap.add_argument("--cycle-s", type=float, default=60.0)
    ap.add_argument("--levels", default="1,2,4,8,16,32", help="perf_analyzer concurrencies within each cycle")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--input-data", default=str(HERE / "perf_inputs.json"))
    ap.add_argument("--chat", choices=["on", "off"], default="off", help="apply_chat_template of every prompt")
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--overload", type=int, default=0, help="afterwards, send capacity + N streams at once")
    ap.add_argument("--pid", type=int, default=None, help="tritonserver's pid (default: found from the gRPC port)")
    ap.add_argument("--perf-analyzer", default=None)
    ap.add_argument("--json", default=None, help="write the samples and the summary here")
    args = ap.parse_args(argv)

    pa = find_perf_analyzer(args.perf_analyzer)
    pid = args.pid or find_server(args.url)
    levels = [int(x) for x in args.levels.split(",")]
    cycles = max(2, round(args.minutes * 60 / args.cycle_s))       # a first and a last one to compare
    work = Path(tempfile.mkdtemp(prefix="specdec-load-"))
    data = write_input_data(Path(args.input_data), work / "inputs.json", args.max_tokens, None, args.chat == "on")
    start = scrape(args.metrics_url)
    sampler = Sampler(args.metrics_url, pid, args.sample_s)
    sampler.start()
    t0 = time.time()
    runs, failures, bounds = [], [], []
    overrun = 0.0          # seconds a perf_analyzer run lasts beyond its windows (start-up, draining the last
                           # requests): learnt as it goes, so the whole soak lasts about --minutes
    for c in range(cycles):
        cycle_start = time.time()
        for level in levels:
            export = work / f"cycle{c}_c{level}.json"
            asked, t_level = max(3.0, args.cycle_s / len(levels) - overrun), time.time()
            code, log = run_level(pa, args, data, level, asked, export)
            overrun = 0.5 * overrun + 0.5 * max(0.0, time.time() - t_level - asked)
            rows = summarize(json.loads(export.read_text())) if export.exists() else []
            row = rows[0] if rows else {"requests": 0}
            runs.append({"cycle": c, "concurrency": level, "exit_code": code, "t": time.time() - t0, **row})
            if code != 0:
                failures.append(f"cycle {c} concurrency {level}: perf_analyzer exit {code}: {log[-500:]}")
            print(f"cycle {c + 1}/{cycles} concurrency {level:>2}: {row.get('requests', 0):>4} requests, "
                  f"{row.get('output_tokens_per_s', 0):7.1f} tok/s, exit {code}", flush=True)
        while time.time() - cycle_start < args.cycle_s:       # a cycle lasts at least cycle_s
            time.sleep(0.2)
        bounds.append((cycle_start, time.time()))
    sampler.stop.set()
    sampler.join()
    end = settle(args.metrics_url)
    samples = sampler.samples
    per_cycle = []
    for c, (a, b) in enumerate(bounds):
        rows = [x for x in samples if a <= x["t"] < b]
        stats = _minute(rows)
        if rows:
            stats["failed"] = rows[-1].get("nv_inference_request_failure", 0) - rows[0].get("nv_inference_request_failure", 0)
        stats["requests"] = sum(r.get("requests", 0) for r in runs if r["cycle"] == c)
        stats["seconds"] = b - a
        per_cycle.append(stats)
        print(f"cycle {c + 1}: {stats['seconds']:.0f} s, {stats['requests']} requests, failed {stats.get('failed')}, "
              f"RSS {stats.get('rss_mib_mean', 0):.0f} MiB (max {stats.get('rss_mib_max', 0):.0f}), "
              f"KV used {stats.get('kv_used_mean', 0):.1f} blocks (max {stats.get('kv_used_max', 0):.0f})", flush=True)
    first, last = per_cycle[0], per_cycle[-1]
    failed = end.get("nv_inference_request_failure", 0) - start.get("nv_inference_request_failure", 0)
    summary = {
        "machine": {"cpus": __import__("os").cpu_count()}, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv), "cycles": cycles, "levels": levels,
        "requests": sum(r.get("requests", 0) for r in runs), "output_tokens": sum(r.get("output_tokens", 0) for r in runs),
        "failed_requests": failed,
        "rejected": end.get("specdec_requests_rejected_total", 0) - start.get("specdec_requests_rejected_total", 0),
        "perf_analyzer_failures": failures, "first_cycle": first, "last_cycle": last, "per_cycle": per_cycle,
        "kv_free_at_end": end["specdec_kv_free_blocks"], "kv_total": end["specdec_kv_total_blocks"],
        "kv_idle_after_load": end["specdec_kv_free_blocks"] == end["specdec_kv_total_blocks"],
    }
    if args.overload:
        summary["overload"] = overload(args, args.metrics_url)
        summary["rss_mib_after_overload"] = tree_rss(pid)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("perf_analyzer_failures", "per_cycle")}, indent=1))
    for f in failures:
        print(f, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs, "samples": samples}, indent=1))
    ok = failed == 0 and not failures and summary["rejected"] == 0 and summary["kv_idle_after_load"]
    if args.overload:
        o = summary["overload"]
        ok = ok and o["refused_unavailable"] == args.overload and not o["other_errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
