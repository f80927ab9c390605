"""k_policy auto against AR at batch 16 on the CPU, SmolLM2-135M with its shipped draft, 16 chat prompts x 64 tokens
(a warm pass, then the timed one, per engine), and auto K with its probes switched off. Run from the repository root:
    PYTHONPATH=backend .venv/bin/python bench/auto_k_batch16_cpu.py
"""
import time
from specdec import LLM, SamplingParams
ps = [f"Tell me about topic number {i} in detail, please." for i in range(16)]
P = SamplingParams(max_tokens=64, ignore_eos=True, chat=True)
def run(llm, label, setup=None):
    if setup: setup(llm)
    llm.generate(ps, P)                       # warm pass (auto K learns here too)
    m = llm.engine.metrics; m.reset()
    t = time.perf_counter(); outs = llm.generate(ps, P); dt = time.perf_counter() - t
    print(f"{label}: decode tok/s {m.decode_tokens / m.decode_time:.1f}  wall {dt:.2f}s  rounds {m.rounds} steps {m.decode_steps}", flush=True)
    llm.close()
run(LLM("smollm2-135m", mode="ar", device="cpu", max_batch_size=16), "ar")
run(LLM("smollm2-135m", mode="sync", k=4, k_policy="auto", device="cpu", max_batch_size=16), "auto")
def far(llm): llm.engine.auto_k.probe_every = 10**6
run(LLM("smollm2-135m", mode="sync", k=4, k_policy="auto", device="cpu", max_batch_size=16), "auto, no probes", far)
