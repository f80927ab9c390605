"""GPU check of the tensor-parallel target (NCCL, CUDA graphs) before its timings are trusted.

A tiny random Llama (float32, 8 heads / 4 KV heads) runs AR, sync with a model draft, sync n-gram and
async (SSD, draft worker) with TP = 1 and TP = 2, eager and with CUDA graphs; greedy tokens must be
identical.
Prints one row per case: identical to TP = 1, graphs captured / replayed on rank 0, eager fallbacks.
"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from tiny import make_model  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda:0"     # "cpu" for a dry run (Gloo; no graphs there)
PROMPTS = [[5, 17, 33, 99, 100, 7], [42], [8, 9, 10, 11, 12, 13, 14, 15], [200, 201, 3], [1, 2, 3, 4, 5, 1, 2]]


def run(folder, tp, eager, **kw):
    llm = LLM(str(folder), device=DEVICE, tensor_parallel_size=tp, graphs="off" if eager else "auto", max_batch_size=8, **kw)
    try:
        outs = [o.token_ids for o in llm.generate(PROMPTS, SamplingParams(max_tokens=40, ignore_eos=True))]
        g = llm.engine.runner.graph
        return outs, (len(g.graphs), g.replays) if g else (0, 0), dict(llm.engine.runner.eager_fallbacks)
    finally:
        llm.close()


def main():
    tmp = Path(tempfile.mkdtemp())
    target = make_model(tmp / "t", "llama", layers=2, hidden=256, heads=8, kv_heads=4, seed=0)
    draft = make_model(tmp / "d", "llama", layers=1, hidden=256, heads=8, kv_heads=4, seed=1)
    print(f"{'case':28} {'== TP1':>6} {'graphs':>6} {'replays':>7}  eager fallbacks")
    ok = True
    for name, kw in [("ar", dict(mode="ar")), ("sync model draft k3", dict(mode="sync", draft=str(draft), k=3)),
                     ("sync ngram k4", dict(mode="sync", draft="ngram", k=4)),
                     ("async model draft k3", dict(mode="async", draft=str(draft), k=3))]:
        ref, _, _ = run(target, 1, True, **kw)
        for eager in (True, False):
            outs, (graphs, replays), fb = run(target, 2, eager, **kw)
            same = outs == ref
            ok &= same and (eager or replays > 0)
            print(f"{name + (' eager' if eager else ' graphs'):28} {str(same):>6} {graphs:>6} {replays:>7}  {fb}")
    print("TP CHECK", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
