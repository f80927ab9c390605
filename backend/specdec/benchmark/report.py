"""Tables and plots for bench reports."""
from __future__ import annotations

import sys

SIMULATED = "SIMULATED"


def _sim(r: dict) -> str:
    s = r.get("simulated")
    if not s:
        return ""
    return f"A={s['acceptance']:.2f}" + ("" if s.get("hit") is None else f" H={s['hit']:.2f}")


def print_report(rep: dict, flush: bool = False) -> None:
    simulated = any(r.get("simulated") for r in rep["runs"])
    print(f"device {rep['device_name']} ({rep['device']}), measured bandwidth {rep['bandwidth_GBs']:.0f} GB/s, "
          f"target weights {(rep['target_weight_bytes'] or 0) / 1e6:.0f} MB"
          + (f" per rank, TP {rep['tensor_parallel_size']}" if rep.get("tensor_parallel_size", 1) > 1 else ""))
    if simulated:
        print(f"*** {SIMULATED}: rows marked {SIMULATED} draw each round's outcome with acceptance A and hit rate H "
              "(spec/simulate.py) instead of verifying; their output is not the target's ***")
    # acceptance rate = accepted / drafted tokens; tau (mean accepted length) = committed tokens per target forward
    hdr = (f"{'mode':6} {'K':>2} {'b':>3} {'temp':>4} {'ctx':>5} | {'decode tok/s':>12} {'total tok/s':>11} | {'round ms':>8} "
           f"{'draft ms':>8} {'verify ms':>9} {'host ms':>7} {'build ms':>8} {'wait ms':>7} | {'tau':>5} "
           f"{'acc.rate':>8} {'hit':>5} {'tree':>4} | {'floor tok/s':>11} {'frac':>5} | done")
    print(hdr)
    print("-" * len(hdr))
    for r in rep["runs"]:
        tree = r.get("tree_share")
        print(f"{r['name']:6} {r['k']:>2} {r['b']:>3} {r['temp']:>4} {r.get('prompt_tokens', 0):>5.0f} | "
              f"{r['decode_tok_s']:>12.1f} {r['total_tok_s']:>11.1f} | "
              f"{r.get('round_ms', 0):>8.2f} {r['avg_draft_ms']:>8.2f} {r['avg_verify_ms']:>9.2f} {r.get('host_ms', 0):>7.2f} "
              f"{r.get('avg_build_ms', 0):>8.2f} {r.get('avg_wait_ms', 0):>7.2f} | {r['tokens_per_round']:>5.2f} "
              f"{r['acceptance']:>8.2f} {r['cache_hit_rate']:>5.2f} {'-' if tree is None else f'{tree:.2f}':>4} | "
              f"{r.get('floor_tok_s', 0):>11.0f} {r.get('fraction_of_floor', 0):>5.2f} | "
              f"{r['completed']}/{r['requests']}{' FAIL: ' + '; '.join(r['failures']) if r['failures'] else ''}"
              + (f"  {SIMULATED} {_sim(r)}" if r.get("simulated") else ""))
        if r.get("graph_captures"):
            print(f"       {r['graph_captures']} CUDA graph captures inside this timed run: one-time costs are in its figures")
        if r.get("eager_fallbacks"):
            print(f"       eager fallbacks: {r['eager_fallbacks']}")
    for name, res in rep.get("hf", {}).items():
        print(f"{name:12} (HF transformers, batch 1): {res['tok_s']:.1f} tok/s")
    if simulated:
        print(f"*** {SIMULATED} (see above) ***")
    if flush:
        sys.stdout.flush()


def plot_sweep(rep: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = rep["config"]["sweep"].split("=")[0]
    if key in ("acceptance", "hit"):
        xs = [(r.get("simulated") or {}).get(key) for r in rep["runs"]]
    else:
        xs = [r[key] for r in rep["runs"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, [r["decode_tok_s"] for r in rep["runs"]], "o-", label=f"specdec {rep['mode']}")
    for name, res in rep.get("hf", {}).items():
        ax.axhline(res["tok_s"], ls="--", color="gray", label=name)
    ax.set_xlabel(key)
    ax.set_ylabel("decode tokens/s")
    sim = f" ({SIMULATED})" if any(r.get("simulated") for r in rep["runs"]) else ""
    ax.set_title(f"{rep['config']['target']} on {rep['device_name']}{sim}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
