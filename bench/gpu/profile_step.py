"""Where a decode step's time goes: kernels per step, GPU time per step, host time per step.

python bench/gpu/profile_step.py --target synthetic:smollm2-135m [--mode sync --draft ... --k 4] [--b 1]
--device cpu: the same on the CPU (float32; host time per op instead of kernels).
"""
import argparse
import cProfile
import io
import pstats
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
    ap.add_argument("--gaps", action="store_true",
                    help="also: where the GPU waits (largest idle gaps between kernels, syncs per step) and the host's "
                         "top functions (cProfile), over the same 10 steps")
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
    from specdec.runner.graph_tools import captures
    c0 = captures()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            eng.step()
        sync()
    if a.gaps:
        print(f"GRAPH CAPTURES during the 10 profiled steps: {captures() - c0}")
        gaps_report(prof)
        host = cProfile.Profile()
        host.enable()
        for _ in range(10):
            eng.step()
        sync()
        host.disable()
        text = io.StringIO()
        pstats.Stats(host, stream=text).sort_stats("tottime").print_stats(18)
        print("HOST (cProfile, 10 steps, by own time)")
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])
    ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    kernels = sum(e.count for e in ev) / 10
    gpu_ms = sum(e.self_device_time_total for e in ev) / 10 / 1e3
    flags = " ".join(f for f, on in (("eager", a.eager), ("no-overlap", a.no_overlap), ("no-fused-rope", a.no_fused_rope)) if on)
    print(f"PROFILE {a.target} {a.mode} b={a.b} ctx={a.prompt_len} {flags or 'default'}: {1e3 * wall:.3f} ms/step wall, "
          f"{toks:.2f} tokens/step, {toks / wall:.0f} tok/s; GPU busy {gpu_ms:.3f} ms/step "
          f"({gpu_ms / (1e3 * wall):.0%} of the step) in {kernels:.0f} kernels/step")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))


def gaps_report(prof, top: int = 8) -> None:
    """The largest idle gaps between consecutive GPU kernels/copies of the profiled steps, with the work on
    each side, and the host calls that wait for the device (per step)."""
    events = prof.events()
    dev = sorted((e for e in events if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    gaps = []
    for x, y in zip(dev, dev[1:]):
        g = y.time_range.start - x.time_range.end
        if g > 0:
            gaps.append((g, x.name[:50], y.name[:50]))
    gaps.sort(reverse=True)
    total = sum(g for g, _, _ in gaps)
    print(f"GPU IDLE between kernels: {total / 10 / 1e3:.3f} ms/step; largest gaps (us, after -> before):")
    for g, x, y in gaps[:top]:
        print(f"  {g:9.1f}  {x}  ->  {y}")
    waits = {}
    for e in events:
        if e.device_type.name == "CPU" and any(w in e.name for w in ("Synchronize", "cudaMemcpy ", "aten::item",
                                                                      "aten::_local_scalar_dense")):
            n, t = waits.get(e.name, (0, 0.0))
            waits[e.name] = (n + 1, t + e.cpu_time_total)
    print("HOST WAITS per step: " + ", ".join(f"{k} x{n / 10:.1f} ({t / 10 / 1e3:.2f} ms)"
                                               for k, (n, t) in sorted(waits.items())))


if __name__ == "__main__":
    main()
