"""`specdec bench`: the seed's flags (--spec --async --k --f --flh --flm --x --backup --b --numseqs
--output_len --temp --eager --gpus) plus --tp/--target/--draft/--prompts/--baseline/--sweep/--profile."""
from __future__ import annotations

import json

from .common import add_engine_args


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure throughput, step times and acceptance")
    add_engine_args(p, skip=("mode", "devices"), title="engine (config tree; seed-style aliases)",
                    aliases={"fan_out": ("--f",), "fan_out_hit": ("--flh",), "fan_out_miss": ("--flm",),
                             "sampler_x": ("--x",), "max_batch_size": ("--b",), "tensor_parallel_size": ("--tp",)},
                    # the seed's bench defaults: one sequence at a time, K 6 (benchmark/run.py bench_k: unless the draft alias
                    # has a measured K); a bounded context for synthetic shapes whose configs allow 131072 positions
                    defaults={"max_batch_size": 1, "max_model_len": 4096})
    p.add_argument("--eager", dest="graphs", action="store_const", const="off", help="no CUDA graphs (--graphs off)")
    p.add_argument("--spec", action="store_true", help="speculative decoding (sync unless --async)")
    p.add_argument("--async", dest="async_", action="store_true",
                   help="SSD (the draft in this process on the target's GPU, or on its own GPU with --gpus)")
    p.add_argument("--modes", default=None, help="several modes in one table, e.g. ar,sync,async (one engine at a time)")
    p.add_argument("--numseqs", type=int, default=8, help="number of prompts")
    p.add_argument("--output_len", "--output-len", type=int, default=128, help="tokens per request (EOS ignored)")
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--gpus", type=int, default=None,
                   help="total GPUs, the draft's included in async mode (--gpus 5 --async: TP 4 on GPUs 0-3, draft on 4)")
    p.add_argument("--prompts", default=None, help="builtin (default), gsm8k, or a JSONL file with 'text'")
    p.add_argument("--prompt-len", type=int, default=None,
                   help="random-token prompts of exactly this many tokens instead (e.g. 2048: long contexts)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--baseline", choices=["none", "hf"], default="none", help="also run HF transformers")
    p.add_argument("--sweep", default=None, help="k=2,4,6 | b=1,4,16 | temp=0,0.7 | acceptance=0.5,0.7,0.9 | hit=0.5,0.8 "
                   "(the last two SIMULATED: need --simulate-acceptance)")
    p.add_argument("--plot", default=None, help="PNG path for the sweep plot")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--profile", default=None, help="write per-step JSON lines here")
    p.set_defaults(func=run)


def run(a) -> int:
    import torch

    from ..benchmark.report import plot_sweep, print_report
    from ..benchmark.run import bench
    if a.dtype is None:                   # bench default: bfloat16 on CUDA, float32 on CPU
        a.dtype = "bfloat16" if (a.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else "float32"

    runs = []

    def publish(report):                  # each mode's, before its engine closes (benchmark/run.py)
        print_report(report, flush=True)
        runs.extend(report["runs"])
        if a.json:                        # every mode measured so far
            with open(a.json, "w") as f:
                json.dump({**report, "runs": runs}, f, indent=1)

    report = bench(a, on_report=publish)
    if a.plot and a.sweep:
        plot_sweep(report, a.plot)
    return 1 if any(r["failures"] for r in report["runs"]) else 0
