"""GPU check: every attention backend through the whole engine, on tiny random Llama models whose head dim
flash-attn-4 takes (64 and 128), in bfloat16 and float16.

For each (head dim, dtype, backend): AR greedy tokens, then sync (K=4, draft = target, so nearly every token is
drafted and verified) and SSD (K=3, tree policy always) greedy tokens, with CUDA graphs. Printed per row:
  spec==AR   the speculative outputs equal AR under the same backend (losslessness; a verify of K+1 queries and
             a decode of 1 query may round differently in bf16, so a mismatch is reported with its position);
  vs triton  how many of the prompts' AR outputs equal the Triton backend's, and the first differing position
             (backends sum in different orders: bf16 rounding may flip a near-tie argmax);
  acc        accepted / drafted of the sync run.
Kernel-level errors against float32 are attention_table.py's.

    python3 bench/gpu/attention_backends_engine.py [--backends sdpa,triton,flash_attn,auto]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "backend"))
from tiny import make_model  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402
from specdec.layers import flash_attention  # noqa: E402

PROMPTS = [[5, 17, 33, 99, 100, 7], [42], [8, 9, 10, 11, 12, 13, 14, 15] * 20, [200, 201, 3], [1, 2, 3, 4, 5, 1, 2] * 40]


def first_diff(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(got: list[list[int]], ref: list[list[int]]) -> str:
    same = sum(g == r for g, r in zip(got, ref))
    firsts = [d for g, r in zip(got, ref) if (d := first_diff(g, r)) is not None]
    return f"{same}/{len(ref)}" + (f" (first diff at {min(firsts)})" if firsts else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="sdpa,triton,flash_attn,auto")
    ap.add_argument("--tokens", type=int, default=48)
    a = ap.parse_args()
    backends = [b for b in a.backends.split(",") if b != "flash_attn" or flash_attention.available()]
    if "flash_attn" in a.backends and "flash_attn" not in backends:
        print("flash_attn: flash-attn-4 does not import here; left out")
    tmp = Path(tempfile.mkdtemp())
    greedy = SamplingParams(max_tokens=a.tokens, ignore_eos=True)
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; backends {backends}")
    print(f"{'head_dim':>8} {'dtype':9} {'backend':10} {'sync==AR':>16} {'async==AR':>16} {'AR vs triton':>18} "
          f"{'acc':>5} {'s':>5}")
    failures = 0
    for head_dim in (64, 128):
        folder = make_model(tmp / f"d{head_dim}", "llama", layers=2, hidden=4 * head_dim, heads=4, kv_heads=2,
                            seed=head_dim, init_std=0.05)
        for dtype in ("bfloat16", "float16"):
            ar_ref = None
            for backend in (["triton"] + [b for b in backends if b != "triton"]):
                t0 = time.time()
                try:
                    kw = dict(device="cuda:0", dtype=dtype, attention_backend=backend, max_batch_size=8,
                              max_model_len=1024)
                    ar = [o.token_ids for o in LLM(str(folder), mode="ar", **kw).generate(PROMPTS, greedy)]
                    sync_out = LLM(str(folder), mode="sync", draft=str(folder), k=4, **kw).generate(PROMPTS, greedy)
                    sync = [o.token_ids for o in sync_out]
                    acc = sum(o.stats["accepted"] for o in sync_out) / max(1, sum(o.stats["drafted"] for o in sync_out))
                    ssd = [o.token_ids for o in LLM(str(folder), mode="async", draft=str(folder), k=3,
                                                    tree_policy="always", **kw).generate(PROMPTS, greedy)]
                    ar_ref = ar if backend == "triton" else ar_ref
                    vs = compare(ar, ar_ref) if ar_ref is not None else "-"
                    failures += (sync != ar) + (ssd != ar)
                    print(f"{head_dim:>8} {dtype:9} {backend:10} {compare(sync, ar):>16} {compare(ssd, ar):>16} "
                          f"{vs:>18} {acc:>5.2f} {time.time() - t0:>5.1f}", flush=True)
                except Exception as e:
                    failures += 1
                    print(f"{head_dim:>8} {dtype:9} {backend:10} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    traceback.print_exc(limit=6)
    print(f"speculative outputs differing from AR (or failed runs): {failures}")


if __name__ == "__main__":
    main()
