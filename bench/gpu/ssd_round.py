"""SSD round on one GPU (issue 16's SSD half): async vs sync vs AR, per-phase ms and hit rate, in ONE process.

Cases (synthetic shapes, random weights; the draft in the target's process on a second CUDA stream):
  A. 8B + 1B, b=1, every round a miss: AR, sync, async (tree_policy auto: the build rule should draft
     like sync) and async with tree_policy always (the raw cost of building a tree every round).
     Target: async round <= 1.15 x sync round.
  B. draft = target (1B shape, identical weights: acceptance ~0.9, hit rate ~1), b=1 and b=8: sync, async
     (auto), async (always). Target: async >= sync.
  C. SIMULATED (spec/simulate.py) 8B + 1B, b=1: acceptance A in {0.5, 0.7, 0.9}, hit rate H=0.8:
     AR, sync, async (auto), async (always). Target: async >= 1.3 x sync.
Each case is one `specdec bench` run (warm-up on the same prompts, then the timed run). Prints every
bench table as it goes and a compact summary at the end; writes ssd_round.json to $OUT when set.

    PYTHONPATH=$PWD/backend python3 bench/gpu/ssd_round.py           # one GPU, < 8 minutes
    DRY=1 PYTHONPATH=$PWD/backend python3 bench/gpu/ssd_round.py     # CPU, tiny shapes (checks the script)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

DRY = os.environ.get("DRY") == "1"
OUT = os.environ.get("OUT")
BUDGET_S = float(os.environ.get("BUDGET_S", "450"))      # stop starting cases after this (the lead's limit: 8 min)

if DRY:
    BIG, SMALL, DEV = "synthetic:llama-tiny", "synthetic:llama-tiny-draft", ["--device", "cpu"]
    LEN, N1, N8, SAME = "16", "2", "4", "synthetic:llama-tiny"
else:
    BIG, SMALL, DEV = "synthetic:llama-8b", "synthetic:llama-1b", []
    LEN, N1, N8, SAME = "96", "2", "8", "synthetic:llama-1b"
COMMON = ["--k", "4", "--f", "3", "--output_len", LEN, "--max-model-len", "2048", "--prompts", "gsm8k"] + DEV

CASES = [  # (case, label, argv); the "tree always" diagnostics last, so a tight time budget drops them first
    ("A", "8B+1B miss", ["--target", BIG, "--draft", SMALL, "--modes", "ar,sync,async", "--b", "1", "--numseqs", N1]),
    ("B", "1B=1B", ["--target", SAME, "--draft", SAME, "--modes", "sync,async", "--b", "8", "--sweep", "b=1,8",
                    "--numseqs", N8]),
    ("C", "SIMULATED 8B+1B H=0.8", ["--target", BIG, "--draft", SMALL, "--modes", "ar,sync,async", "--b", "1",
                                    "--numseqs", N1, "--simulate-acceptance", "0.7", "--simulate-hit", "0.8",
                                    "--sweep", "acceptance=0.5,0.7,0.9"]),
    ("A", "8B+1B miss, tree always", ["--target", BIG, "--draft", SMALL, "--modes", "async", "--tree-policy", "always",
                                      "--b", "1", "--numseqs", N1]),
    ("C", "SIMULATED 8B+1B H=0.8, tree always", ["--target", BIG, "--draft", SMALL, "--modes", "async",
                                                 "--tree-policy", "always", "--b", "1", "--numseqs", N1,
                                                 "--simulate-acceptance", "0.7", "--simulate-hit", "0.8",
                                                 "--sweep", "acceptance=0.5,0.7,0.9"]),
    ("B", "1B=1B, tree always", ["--target", SAME, "--draft", SAME, "--modes", "async", "--tree-policy", "always",
                                 "--b", "8", "--sweep", "b=1,8", "--numseqs", N8]),
]


def bench_args(argv: list[str]):
    from specdec.commands import bench as bench_cmd
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    bench_cmd.add_parser(sub)
    a = p.parse_args(["bench"] + COMMON + argv)
    if a.dtype is None:
        a.dtype = "float32" if DRY else "bfloat16"
    return a


def row_of(case: str, label: str, r: dict) -> dict:
    sim = r.get("simulated") or {}
    return {"case": case, "label": label, "mode": r["name"], "b": r["b"], "A": sim.get("acceptance"),
            "H": sim.get("hit"), "tok_s": r["decode_tok_s"], "round_ms": r.get("round_ms", 0.0),
            "draft_ms": r["avg_draft_ms"], "verify_ms": r["avg_verify_ms"], "host_ms": r.get("host_ms", 0.0),
            "build_ms": r.get("avg_build_ms", 0.0), "wait_ms": r.get("avg_wait_ms", 0.0),
            "tok_round": r["tokens_per_round"], "accept": r["acceptance"], "hit": r["cache_hit_rate"],
            "tree": r.get("tree_share"), "policy": "always" if "always" in label else "auto",
            "done": f"{r['completed']}/{r['requests']}", "fail": "; ".join(r["failures"])}


def summary(rows: list[dict]) -> list[str]:
    out = []
    hdr = (f"{'case':4} {'what':36} {'mode':5} {'b':>2} {'A':>4} | {'tok/s':>8} {'round':>7} {'draft':>6} {'verify':>6} "
           f"{'host':>5} {'build':>6} {'wait':>5} | {'tok/rd':>6} {'acc':>4} {'hit':>4} {'tree':>4}")
    out += [hdr, "-" * len(hdr)]
    for x in rows:
        a = "" if x["A"] is None else f"{x['A']:.1f}"
        tree = "-" if x["tree"] is None else f"{x['tree']:.2f}"
        sim = "  SIMULATED" if x["A"] is not None else ""
        out.append(f"{x['case']:4} {x['label'][:36]:36} {x['mode']:5} {x['b']:>2} {a:>4} | {x['tok_s']:>8.1f} "
                   f"{x['round_ms']:>7.2f} {x['draft_ms']:>6.2f} {x['verify_ms']:>6.2f} {x['host_ms']:>5.2f} "
                   f"{x['build_ms']:>6.2f} {x['wait_ms']:>5.2f} | {x['tok_round']:>6.2f} {x['accept']:>4.2f} "
                   f"{x['hit']:>4.2f} {tree:>4}{sim}{'  FAIL ' + x['fail'] if x['fail'] else ''}")

    def find(case, mode, b=None, A=None, policy="auto"):
        for x in rows:
            if x["case"] == case and x["mode"] == mode and (b is None or x["b"] == b) and \
                    (A is None or (x["A"] is not None and abs(x["A"] - A) < 1e-6)) and (mode != "async" or x["policy"] == policy):
                return x
        return None

    out.append("")
    s, a, al = find("A", "sync"), find("A", "async"), find("A", "async", policy="always")
    if s and a:
        out.append(f"A  8B+1B miss every round: async/sync round time {a['round_ms'] / s['round_ms']:.3f}x "
                   f"(target <= 1.15); tree always: {al['round_ms'] / s['round_ms']:.3f}x" if al else "")
    for b in (1, 8):
        s, a, al = find("B", "sync", b), find("B", "async", b), find("B", "async", b, policy="always")
        if s and a:
            out.append(f"B  draft=target 1B b={b}: async/sync tok/s {a['tok_s'] / s['tok_s']:.3f}x (target >= 1.0)"
                       + (f"; tree always {al['tok_s'] / s['tok_s']:.3f}x" if al else ""))
    for A in (0.5, 0.7, 0.9):
        s, a, al = find("C", "sync", A=A), find("C", "async", A=A), find("C", "async", A=A, policy="always")
        ar = find("C", "ar")
        if s and a:
            out.append(f"C  SIMULATED A={A} H=0.8: async/sync {a['tok_s'] / s['tok_s']:.3f}x (target >= 1.3)"
                       + (f"; tree always {al['tok_s'] / s['tok_s']:.3f}x" if al else "")
                       + (f"; async/AR {a['tok_s'] / ar['tok_s']:.2f}x" if ar else ""))
    return out


def main() -> int:
    import torch
    from specdec.benchmark.report import print_report
    from specdec.benchmark.run import bench
    t0 = time.monotonic()
    dev = "cpu" if DRY else (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    print(f"ssd_round: {dev}, torch {torch.__version__}, DRY={DRY}", flush=True)
    rows, reports = [], []
    for case, label, argv in CASES:
        if time.monotonic() - t0 > BUDGET_S:
            print(f"== skipped (time budget {BUDGET_S:.0f} s): {case} {label}", flush=True)
            continue
        print(f"\n== [{time.monotonic() - t0:.0f} s] case {case}: {label}: specdec bench {' '.join(COMMON + argv)}",
              flush=True)
        try:
            rep = bench(bench_args(argv))
        except Exception as e:                         # keep going: the other cases still measure
            traceback.print_exc()
            rows.append({"case": case, "label": label, "mode": "-", "b": 0, "A": None, "H": None, "tok_s": 0.0,
                         "round_ms": 0.0, "draft_ms": 0.0, "verify_ms": 0.0, "host_ms": 0.0, "build_ms": 0.0,
                         "wait_ms": 0.0, "tok_round": 0.0, "accept": 0.0, "hit": 0.0, "tree": None,
                         "policy": "", "done": "0/0", "fail": f"{type(e).__name__}: {e}"[:200]})
            continue
        print_report(rep)
        reports.append({"case": case, "label": label, "report": rep})
        rows += [row_of(case, label, r) for r in rep["runs"]]
        sys.stdout.flush()
    lines = summary(rows)
    print(f"\n== summary ({time.monotonic() - t0:.0f} s; rows with A are SIMULATED: their outcomes are drawn, "
          "not verified)")
    print("\n".join(lines))
    if OUT:
        os.makedirs(OUT, exist_ok=True)
        for rep in reports:
            for r in rep["report"]["runs"]:
                r.pop("outputs", None)
        with open(os.path.join(OUT, "ssd_round.json"), "w") as f:
            json.dump({"rows": rows, "reports": reports}, f, indent=1, default=str)
        with open(os.path.join(OUT, "ssd_round_summary.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
