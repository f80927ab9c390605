"""Host time of a speculative round, sync against SSD drafting like sync (no trees), on the CPU with tiny random
models (their forwards cost little, so the Python per round and per row shows): ms/step and, with --profile, the
top host functions of the async round. Run from the repository root:

    PYTHONPATH=backend .venv/bin/python bench/ssd_host_round.py [--b 16] [--k 2] [--steps 200] [--profile]

Random weights accept nothing, so the build rule turns SSD to no-tree rounds (the first rounds explore trees:
they are stepped before the timing starts).
"""
import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "tests")
from tiny import make_model  # noqa: E402

from specdec import LLM, SamplingParams  # noqa: E402


def run(mode: str, target: Path, draft: Path, b: int, k: int, steps: int, profile: bool) -> float:
    llm = LLM(str(target), draft=str(draft), mode=mode, k=k, device="cpu", max_batch_size=b, max_model_len=4096,
              graphs="padded")
    eng = llm.engine
    params = SamplingParams(max_tokens=steps * 2 + 400, ignore_eos=True)
    for i in range(b):
        eng.add_request([5 + i % 200, 17, 33, 99, 100, 7], params)
    for _ in range(40):                                  # prefill, then the build rule's exploration rounds
        eng.step()
    pr = cProfile.Profile() if profile else None
    if pr:
        pr.enable()
    t0 = time.perf_counter()
    for _ in range(steps):
        eng.step()
    ms = (time.perf_counter() - t0) / steps * 1e3
    if pr:
        pr.disable()
        st = pstats.Stats(pr).sort_stats("cumtime")
        st.print_stats("draft/|engine.py|spec/", 30)
    extra = eng.drafter.core.summary() if mode == "async" else {}
    print(f"{mode:<6} b={b} K={k}: {ms:.3f} ms/step" + (f"  (device rounds {extra['device_rounds']}, "
                                                         f"tree rounds {extra['tree_rounds']})" if extra else ""))
    llm.close()
    return ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--b", type=int, default=16)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    target = make_model(root / "t", "llama", layers=1, hidden=64, seed=0)
    draft = make_model(root / "d", "llama", layers=1, hidden=32, seed=1)
    s = run("sync", target, draft, a.b, a.k, a.steps, False)
    x = run("async", target, draft, a.b, a.k, a.steps, a.profile)
    print(f"async / sync host time per round: {x / s:.2f}x")


if __name__ == "__main__":
    main()
