"""Host time of one engine step at batch 256 on the CPU (tiny random model, graphs "padded", cProfile):
where the Python per-sequence work goes. Run from the repository root:
PYTHONPATH=backend .venv/bin/python bench/host_step_profile.py            # under cProfile, 30 steps
PYTHONPATH=backend .venv/bin/python bench/host_step_profile.py --timed    # no profiler: ms/step over 60 steps
"""
import cProfile, pstats, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "tests")
from tiny import make_model
from specdec import LLM, SamplingParams
t = make_model(Path(tempfile.mkdtemp()) / "t", "llama", layers=1, hidden=64, seed=0)
llm = LLM(str(t), device="cpu", max_batch_size=256, max_model_len=512, graphs="padded")
eng = llm.engine
P = [[5 + i % 200, 17, 33, 99, 100, 7] for i in range(256)]
params = SamplingParams(max_tokens=300, ignore_eos=True)
for p in P:
    eng.add_request(p, params)
for _ in range(5):
    eng.step()
if "--timed" in sys.argv:
    t0 = time.perf_counter()
    for _ in range(60):
        eng.step()
    print(f"b=256 tiny model: {(time.perf_counter() - t0) / 60 * 1e3:.2f} ms/step wall (no profiler)")
    sys.exit(0)
t0 = time.perf_counter(); n = 30
pr = cProfile.Profile(); pr.enable()
for _ in range(n):
    eng.step()
pr.disable()
dt = (time.perf_counter() - t0) / n
print(f"b=256 tiny model: {dt*1e3:.2f} ms/step wall")
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
