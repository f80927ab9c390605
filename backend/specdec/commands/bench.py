"""`specdec bench`: the seed's flags (--spec --async --k --f --flh --flm --x --backup --b --numseqs
--output_len --temp --eager --gpus) plus --tp/--target/--draft/--prompts/--baseline/--sweep/--profile."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure throughput, step times and acceptance")
    p.add_argument("--target", default="smollm2-135m", help="alias, folder, .gguf or synthetic:llama-8b|llama-1b")
    p.add_argument("--draft", default=None, help="draft folder/alias, self:N, ngram, synthetic:llama-1b")
    p.add_argument("--spec", action="store_true", help="speculative decoding (sync unless --async)")
    p.add_argument("--async", dest="async_", action="store_true", help="SSD: draft on its own device")
    p.add_argument("--k", type=int, default=6, help="draft tokens per round")
    p.add_argument("--f", type=int, default=3, help="fan-out (async)")
    p.add_argument("--flh", type=int, nargs="+", default=None, help="fan-out list on a cache hit (length k+1)")
    p.add_argument("--flm", type=int, nargs="+", default=None, help="fan-out list on a cache miss (length k+1)")
    p.add_argument("--x", type=float, default=None, help="Saguaro sampling C (async)")
    p.add_argument("--backup", default="jit", choices=["jit", "fast", "auto"])
    p.add_argument("--b", type=int, default=1, help="batch size (max running sequences)")
    p.add_argument("--numseqs", type=int, default=8, help="number of prompts")
    p.add_argument("--output_len", "--output-len", type=int, default=128, help="tokens per request (EOS ignored)")
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--gpus", type=int, default=None,
                   help="total GPUs, the draft's included in async mode (--gpus 5 --async: TP 4 on GPUs 0-3, draft on 4)")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel ranks of the target (default: from --gpus, else 1)")
    p.add_argument("--device", default=None)
    p.add_argument("--draft-device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--prompts", default=None, help="builtin (default), gsm8k, or a JSONL file with 'text'")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument("--baseline", choices=["none", "hf"], default="none", help="also run HF transformers")
    p.add_argument("--sweep", default=None, help="k=2,4,6 | b=1,4,16 | temp=0,0.7")
    p.add_argument("--plot", default=None, help="PNG path for the sweep plot")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--profile", default=None, help="write per-step JSON lines here")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(a) -> int:
    import torch

    from ..benchmark.report import plot_sweep, print_report
    from ..benchmark.run import bench
    if a.dtype is None:
        a.dtype = "bfloat16" if (a.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else "float32"
    report = bench(a)
    print_report(report)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    if a.plot and a.sweep:
        plot_sweep(report, a.plot)
    return 1 if any(r["failures"] for r in report["runs"]) else 0
