"""The benchmark loop: build the engine once, warm it up on the same shapes, run, report.

Decode throughput counts the tokens committed by decode steps (after truncation by max_tokens)
over the time of those steps; total throughput is all output tokens over the wall time of
``generate`` (prefill included). Draft/verify times are per engine round.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import torch

from ..config import SamplingParams
from .floor import floor_tok_s, measure_bandwidth, weight_bytes
from .prompts import load_prompts

log = logging.getLogger(__name__)


@dataclass
class Run:
    name: str
    mode: str
    k: int
    b: int
    temp: float
    results: dict = field(default_factory=dict)


def placement(a, mode: str, num_gpus: int) -> dict:
    """Devices of the target's ranks and of the draft. ``--gpus`` counts every GPU, the draft's
    included in async mode (the seed's convention: ``--gpus 5 --async`` = TP 4 on GPUs 0-3, draft
    on GPU 4); ``--tp`` overrides the target's share."""
    gpus, tp = getattr(a, "gpus", None), getattr(a, "tensor_parallel_size", None)
    own_draft = mode == "async"
    if tp is None:
        tp = max(1, gpus - own_draft) if gpus else 1
    if gpus and tp + own_draft > gpus:
        raise ValueError(f"--tp {tp}{' --async' if own_draft else ''} needs {tp + own_draft} GPUs; --gpus is {gpus}")
    device = a.device or ("cuda:0" if num_gpus else "cpu")
    cuda = device.startswith("cuda")
    first = (torch.device(device).index or 0) if cuda else 0
    devices = [f"cuda:{first + r}" for r in range(tp)] if cuda and tp > 1 else None
    draft_device = a.draft_device
    if own_draft and draft_device is None and cuda and num_gpus > first + tp:
        draft_device = f"cuda:{first + tp}"
    return dict(device=devices[0] if devices else device, devices=devices, tensor_parallel_size=tp,
                draft_device=draft_device)


def build_llm(a):
    """The LLM for these bench arguments: the engine options given (commands/common.py), the mode from
    --spec/--async, and the placement from --gpus/--tp/--device."""
    from .. import LLM
    from ..commands.common import engine_options
    mode = "async" if a.async_ else "sync" if a.spec else "ar"
    where = placement(a, mode, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    kw = {**engine_options(a), **where, "mode": mode}
    if mode == "ar":
        kw.pop("draft", None)
    return LLM(**kw), mode


def _profiled(engine, sink: list):
    """Wrap the engine's step phases to record one JSON line per step."""
    def wrap(fn, kind):
        def inner(*args):
            m = engine.metrics
            before = (m.draft_time, m.verify_time, m.channel_wait_time, m.decode_tokens, m.accepted, m.drafted)
            t0 = time.perf_counter()
            out = fn(*args)
            dt = time.perf_counter() - t0
            d = [x - y for x, y in zip((m.draft_time, m.verify_time, m.channel_wait_time, m.decode_tokens,
                                        m.accepted, m.drafted), before)]
            sink.append({"step": kind, "batch": len(out), "step_ms": 1e3 * dt, "draft_ms": 1e3 * d[0],
                         "verify_ms": 1e3 * d[1], "channel_wait_ms": 1e3 * d[2],
                         "host_ms": 1e3 * max(dt - d[0] - d[1] - d[2], 0.0), "tokens": d[3],
                         "accepted": d[4], "drafted": d[5]})
            return out
        return inner
    engine._decode = wrap(engine._decode, "decode")
    engine._prefill = wrap(engine._prefill, "prefill")


def run_once(llm, prompt_ids, output_len: int, temp: float, k: int | None, profile: list | None) -> dict:
    eng = llm.engine
    params = SamplingParams(temperature=temp, max_tokens=output_len, ignore_eos=True,
                            num_draft_tokens=k, seed=None)
    eng.metrics.reset()                # in place: drafters and Triton hold the same object
    failures, outs = [], []
    t0 = time.perf_counter()
    try:
        outs = llm.generate(prompt_ids, params)
    except torch.cuda.OutOfMemoryError as e:       # reported, not hidden
        failures.append(f"out of memory: {e}")
    except RuntimeError as e:
        failures.append(f"runtime error: {e}")
    wall = time.perf_counter() - t0
    m = eng.metrics.summary()
    tokens = sum(len(o.token_ids) for o in outs)
    return {
        "completed": sum(o.finish_reason is not None for o in outs), "requests": len(prompt_ids),
        "failures": failures, "output_tokens": tokens, "wall_s": wall,
        "total_tok_s": tokens / wall if wall else 0.0, "decode_tok_s": m["decode_tok_s"],
        "avg_draft_ms": m["avg_draft_ms"], "avg_verify_ms": m["avg_verify_ms"],
        "tokens_per_round": m["tokens_per_round"] if m["rounds"] else 1.0,
        "acceptance": m["acceptance_rate"], "cache_hit_rate": m["cache_hit_rate"],
        "prefill_s": m["prefill_time"], "decode_s": m["decode_time"], "decode_steps": m["decode_steps"],
        "graph_replays": sum(r.graph.replays for r in eng.runners if getattr(r, "graph", None)),
        "eager_fallbacks": {r.name: dict(r.eager_fallbacks) for r in eng.runners if getattr(r, "eager_fallbacks", None)},
        "outputs": [o.token_ids for o in outs],
    }


def bench(a, on_report=None) -> dict:
    """Build the engine, run, and hand the report to ``on_report`` (print, JSON) BEFORE the engine is
    closed: a close that hangs (worker processes) can then no longer swallow the results."""
    llm, mode = build_llm(a)
    eng = llm.engine
    if getattr(a, "prompt_len", None):
        prompt_ids = random_prompts(a.numseqs, a.prompt_len, eng.runner.vocab_size, a.seed or 0)
    else:
        texts = load_prompts(a.prompts, a.numseqs)
        prompt_ids = [llm.encode(t, SamplingParams(chat=a.chat)) for t in texts]
    sweep_key, sweep_vals = parse_sweep(a.sweep)
    device = eng.device
    bw = measure_bandwidth(device)
    wbytes = weight_bytes(eng.runner.model) if hasattr(eng.runner, "model") and hasattr(eng.runner.model, "lm_head") else None
    arch = getattr(getattr(eng.runner, "model", None), "arch", None) or eng.target.arch   # one rank's shard with TP
    per_tok = arch.kv_bytes_per_token(torch.empty(0, dtype=getattr(torch, a.dtype)).dtype) if arch else 0
    mean_ctx = sum(len(p) for p in prompt_ids) / len(prompt_ids) + a.output_len / 2
    profile = [] if a.profile else None
    if profile is not None:
        _profiled(eng, profile)
    runs = []
    for val in sweep_vals:
        k = val if sweep_key == "k" else (a.k if mode != "ar" else None)
        b = val if sweep_key == "b" else a.max_batch_size
        temp = val if sweep_key == "temp" else a.temp
        eng.scheduler.max_batch_size = b
        log.info("warm-up: mode=%s k=%s b=%d temp=%s", mode, k, b, temp)
        run_once(llm, prompt_ids, a.output_len, temp, k, None)   # same shapes: graphs captured before timing
        if profile is not None:
            profile.append({"run": f"{mode} k={k} b={b} temp={temp}"})
        res = run_once(llm, prompt_ids, a.output_len, temp, k, profile)
        if wbytes:
            fl = floor_tok_s(bw, wbytes, per_tok * mean_ctx, min(b, len(prompt_ids)))
            res["floor_tok_s"] = fl
            res["fraction_of_floor"] = res["decode_tok_s"] / fl if fl else 0.0
        res["prompt_tokens"] = sum(len(p) for p in prompt_ids) / len(prompt_ids)
        runs.append(Run(f"{mode}", mode, k or 0, b, temp, res))
    report = {"config": {k: v for k, v in vars(a).items() if k != "func"}, "device": str(device),
              "tensor_parallel_size": eng.cfg.tensor_parallel_size,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "bandwidth_GBs": bw / 1e9, "target_weight_bytes": wbytes, "mode": mode,
              "runs": [{"name": r.name, "k": r.k, "b": r.b, "temp": r.temp, **r.results} for r in runs]}
    if a.baseline == "hf" and eng.target.kind in ("native", "hf"):
        from .hf_baseline import run_hf
        draft_folder = getattr(getattr(eng.drafter, "runner", None), "folder", None)
        report["hf"] = run_hf(eng.target.folder, prompt_ids, a.output_len, device, getattr(torch, a.dtype),
                              a.temp, draft=a.draft if mode != "ar" else None, draft_folder=draft_folder, k=a.k)
    if profile is not None:
        with open(a.profile, "w") as f:
            for row in profile:
                f.write(json.dumps(row) + "\n")
    if on_report is not None:
        on_report(report)
    llm.close()
    return report


def random_prompts(n: int, length: int, vocab_size: int, seed: int) -> list[list[int]]:
    """n prompts of ``length`` uniform token ids (away from the vocabulary's ends: special tokens)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = min(256, vocab_size // 4), max(min(256, vocab_size // 4) + 1, vocab_size - 256)
    return torch.randint(lo, hi, (n, length), generator=g).tolist()


def parse_sweep(spec: str | None):
    if not spec:
        return None, [None]
    key, _, vals = spec.partition("=")
    if key not in ("k", "b", "temp") or not vals:
        raise ValueError(f"--sweep {spec!r}: expected k=2,4,6 or b=1,4,16 or temp=0,0.7")
    conv = float if key == "temp" else int
    return key, [conv(v) for v in vals.split(",")]
