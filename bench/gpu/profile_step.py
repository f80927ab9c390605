"""Where a decode step's time goes: kernels per step, GPU time per step, host time per step.

python bench/gpu/profile_step.py --target synthetic:smollm2-135m [--mode sync --draft ... --k 4] [--b 1]
--device cpu: the same on the CPU (float32; host time per op instead of kernels).
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from specdec import LLM, SamplingParams


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="synthetic:smollm2-135m")
    ap.add_argument("--draft", default=None)
    ap.add_argument("--mode", default="ar")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--no-overlap", action="store_true", help="AR steps without overlapped scheduling")
    ap.add_argument("--no-fused-rope", action="store_true", help="rotary + K/V write as separate kernels")
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tree-policy", default=None, help="SSD: auto | always")
    ap.add_argument("--simulate-acceptance", type=float, default=None, help="SIMULATED outcomes (timing only)")
    a = ap.parse_args()
    extra = {k: v for k, v in (("tree_policy", a.tree_policy), ("simulate_acceptance", a.simulate_acceptance))
             if v is not None}
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    llm = LLM(a.target, draft=a.draft, mode=a.mode, k=a.k, device=a.device, dtype="bfloat16" if cuda else "float32",
              max_batch_size=a.b, max_model_len=4096, graphs="off" if a.eager else "auto", overlap=not a.no_overlap, **extra)
    if a.no_fused_rope:
        from specdec.layers import fused
        fused.fused_rope_write = False           # before the first step: graphs are captured without it
    eng = llm.engine
    prompts = [[1 + i] + [(7 * j + i) % 5000 + 10 for j in range(a.prompt_len - 1)] for i in range(a.b)]
    params = SamplingParams(max_tokens=(a.steps + 40) * (1 if a.mode == "ar" else a.k + 1) + 20, ignore_eos=True)
    for p in prompts:
        eng.add_request(p, params)
    for _ in range(20):                       # prefill + warm-up steps (captures graphs)
        eng.step()
    sync()
    t = time.perf_counter()
    n0 = eng.metrics.decode_tokens
    for _ in range(a.steps):
        eng.step()
    sync()
    wall = (time.perf_counter() - t) / a.steps
    toks = (eng.metrics.decode_tokens - n0) / a.steps
    if not cuda:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                eng.step()
        print(f"PROFILE {a.target} {a.mode} b={a.b} ctx={a.prompt_len} cpu: {1e3 * wall:.3f} ms/step wall, "
              f"{toks:.2f} tokens/step, {toks / wall:.1f} tok/s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
        return
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            eng.step()
        sync()
    ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    kernels = sum(e.count for e in ev) / 10
    gpu_ms = sum(e.self_device_time_total for e in ev) / 10 / 1e3
    flags = " ".join(f for f, on in (("eager", a.eager), ("no-overlap", a.no_overlap), ("no-fused-rope", a.no_fused_rope)) if on)
    print(f"PROFILE {a.target} {a.mode} b={a.b} ctx={a.prompt_len} {flags or 'default'}: {1e3 * wall:.3f} ms/step wall, "
          f"{toks:.2f} tokens/step, {toks / wall:.0f} tok/s; GPU busy {gpu_ms:.3f} ms/step "
          f"({gpu_ms / (1e3 * wall):.0%} of the step) in {kernels:.0f} kernels/step")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
