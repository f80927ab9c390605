"""GPU check: CUDA-graph (+ compiled elementwise) outputs equal eager outputs, on tiny random models.

Prints one table row per case: tokens identical to eager CUDA, identical to CPU float32, graphs replayed.
"""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from tiny import make_model  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402

PROMPTS = [[5, 17, 33, 99, 100, 7], [42], [8, 9, 10, 11, 12, 13, 14, 15], [200, 201, 3], [1, 2, 3, 4, 5, 1, 2]]


def main():
    tmp = Path(tempfile.mkdtemp())
    target = make_model(tmp / "t", "llama", layers=2, seed=0)
    draft = make_model(tmp / "d", "llama", layers=1, seed=1)
    qwen3 = make_model(tmp / "q", "qwen3", layers=2, seed=3)
    greedy = SamplingParams(max_tokens=40, ignore_eos=True)
    sampled = SamplingParams(max_tokens=40, temperature=0.9, top_k=30, seed=3, ignore_eos=True)
    rows = []
    for name, folder, kw, params in [
        ("llama ar", target, dict(mode="ar"), greedy),
        ("qwen3 ar", qwen3, dict(mode="ar"), greedy),
        ("llama sync same-draft k4", target, dict(mode="sync", draft=str(target), k=4), greedy),
        ("llama sync other-draft k3", target, dict(mode="sync", draft=str(draft), k=3), greedy),
        ("llama sync ngram k4", target, dict(mode="sync", draft="ngram", k=4), greedy),
        ("llama sync sampled k3", target, dict(mode="sync", draft=str(draft), k=3), sampled),
        ("llama async same-draft k3 tree", target, dict(mode="async", draft=str(target), k=3, tree_policy="always"), greedy),
        ("llama async other-draft k3", target, dict(mode="async", draft=str(draft), k=3), greedy),
    ]:
        cpu = [o.token_ids for o in LLM(str(folder), device="cpu", max_batch_size=8, **kw).generate(PROMPTS, params)]
        eager = [o.token_ids for o in LLM(str(folder), device="cuda:0", graphs="off", max_batch_size=8, **kw).generate(PROMPTS, params)]
        g = LLM(str(folder), device="cuda:0", max_batch_size=8, **kw)
        graph = [o.token_ids for o in g.generate(PROMPTS, params)]
        replays = g.engine.runner.graph.replays
        fallbacks = {r.name: r.eager_fallbacks for r in g.engine.runners if hasattr(r, "eager_fallbacks")}
        rows.append((name, graph == eager, graph == cpu, replays, len(g.engine.runner.graph.graphs), fallbacks))
    # bfloat16 runs (no exact reference; must complete and be deterministic)
    b1 = LLM(str(target), device="cuda:0", dtype="bfloat16", mode="sync", draft=str(target), k=4).generate(PROMPTS, greedy)
    b2 = LLM(str(target), device="cuda:0", dtype="bfloat16", mode="sync", draft=str(target), k=4).generate(PROMPTS, greedy)
    rows.append(("bf16 sync same-draft repeat", [o.token_ids for o in b1] == [o.token_ids for o in b2],
                 None, None, None, sum(o.stats["accepted"] for o in b1) / max(1, sum(o.stats["drafted"] for o in b1))))
    ar = [o.token_ids for o in LLM(str(target), device="cpu", max_batch_size=8).generate(PROMPTS, greedy)]
    for mode in ("sync", "async"):     # greedy speculation == the target alone (CPU AR), on the GPU, graphed
        got = [o.token_ids for o in LLM(str(target), device="cuda:0", max_batch_size=8, mode=mode, draft=str(draft),
                                        k=3).generate(PROMPTS, greedy)]
        rows.append((f"{mode} greedy == cpu AR", got == ar, None, None, None, None))
    print(f"{'case':30} {'graph==eager':>12} {'graph==cpu':>10} {'replays':>7} {'graphs':>6} fallbacks/accept")
    for r in rows:
        print(f"{r[0]:30} {str(r[1]):>12} {str(r[2]):>10} {str(r[3]):>7} {str(r[4]):>6} {r[5]}")


if __name__ == "__main__":
    main()
