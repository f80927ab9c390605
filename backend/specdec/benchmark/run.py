"""The benchmark loop: build the engine once per mode, warm it up on the same shapes, run, report.

Decode throughput counts the tokens committed by decode steps (after truncation by max_tokens)
over the time of those steps; total throughput is all output tokens over the wall time of
``generate`` (prefill included). Per-phase times are per engine round: draft (the proposal on the
critical path: a sync draft, or SSD's wait for its tree, lookup and JIT), verify (the target's
forward and verification), host (the rest of the round), build (SSD's tree, off the critical path)
and wait (the part of draft spent waiting on the draft's channel or tree).

``--modes ar,sync,async`` runs several modes in one table (one engine at a time); ``--sweep
acceptance=0.5,0.7,0.9`` (with ``--simulate-acceptance`` set) varies the SIMULATED acceptance
(spec/simulate.py), whose rows are labelled SIMULATED.
"""
from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, field

import torch

from ..config import SamplingParams
from ..runner.graph_tools import captures, kv_bucket
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


def bench_modes(a) -> list[str]:
    """The modes to run: --modes, else the one --spec/--async name."""
    if getattr(a, "modes", None):
        modes = [m.strip() for m in a.modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in ("ar", "sync", "async")]
        if bad or not modes:
            raise ValueError(f"--modes {a.modes!r}: expected a comma-separated subset of ar,sync,async")
        return modes
    return ["async" if a.async_ else "sync" if a.spec else "ar"]


def build_llm(a, mode: str | None = None):
    """The LLM for these bench arguments: the engine options given (commands/common.py), the mode from
    --spec/--async (or ``mode``), and the placement from --gpus/--tp/--device."""
    from .. import LLM
    from ..commands.common import engine_options
    mode = mode or bench_modes(a)[0]
    where = placement(a, mode, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    kw = {**engine_options(a), **where, "mode": mode}
    key, vals = parse_sweep(a.sweep)
    if key == "b":                               # the engine (its KV pool, its graphs) must hold the largest batch
        kw["max_batch_size"] = max(vals + [kw.get("max_batch_size", 1)])
    if key == "k" and mode != "ar":              # and the largest K: a request asking for more drafts gets the engine's K
        kw["k"] = max(vals + [kw.get("k") or 1])
    if mode == "ar":
        for name in ("draft", "simulate_acceptance", "simulate_hit"):
            kw.pop(name, None)
    elif mode == "sync":
        kw.pop("simulate_hit", None)             # no speculation cache to hit
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


# Warm-up passes of the timed run's own requests before it, at most: a pass that captures no CUDA graph ends the
# warm-up. They follow warm_graphs (every batch, context and draft-count key), for what that grid does not hold:
# sampled rows, SSD's trees, SIMULATED outcomes, prompts short enough to prefill in a graph. Each capture (10-200 ms)
# in a timed run of a dozen rounds swamps its per-round figures (BENCHMARKS.md, fourth session).
WARMUP_PASSES = 3


def has_graphs(eng) -> bool:
    """The engine runs static-buffer programs (CUDA graphs, or graphs "padded", whose keys count as captures)."""
    return any(getattr(r, "graph", None) is not None for r in eng.runners)


def longest_context(prompt_ids, output_len: int, k: int) -> int:
    """The most positions a step of the run spans: the longest prompt and its output, plus a round's look-ahead
    (K draft steps and the verify's bonus position; an overlapped AR step runs one token ahead)."""
    return max(len(p) for p in prompt_ids) + output_len + k + 2


def warm_graphs(eng, context: int) -> None:
    """Run every greedy step key a run of the engine's batch size and ``context`` positions can meet (CUDA: capture
    it; padded: count it): engine/warmup.py's grid of batch bucket x context bucket x draft count K..0 (with auto K
    off, and the drafts' catch-up writes after its plain steps). Which keys a run of its own requests meets depends
    on its rounds (acceptance, rows finishing apart, auto K's choices): on an H100, passes of them left 3 captures
    to the timed run."""
    from ..engine.warmup import warm_up
    auto = eng.auto_k
    warm_up(eng, max_context=kv_bucket(context, 1, eng.max_model_len), cuda_only=False)   # up to context's bucket
    eng.auto_k = auto                     # its estimates so far: the grid's dummy prompts did not reach them


def run_once(llm, prompt_ids, output_len: int, temp: float, k: int | None, profile: list | None) -> dict:
    eng = llm.engine
    params = SamplingParams(temperature=temp, max_tokens=output_len, ignore_eos=True,
                            num_draft_tokens=k, seed=None)
    eng.metrics.reset()                # in place: drafters and Triton hold the same object
    sim = getattr(eng, "simulator", None)
    if sim is not None:
        sim.reseed()                   # SIMULATED: every run draws the same outcomes (the warm-up's shapes recur)
    c0 = captures()
    drafter_summary = getattr(eng.drafter, "summary", None)
    ssd0 = drafter_summary() if callable(drafter_summary) else {}   # the drafter's counters run since its start
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
    steps = max(m["decode_steps"], 1)
    round_ms = 1e3 * m["decode_time"] / steps
    ssd = drafter_summary() if callable(drafter_summary) else {}
    # this run's SSD rounds of each kind
    trees = {k: ssd[k] - ssd0.get(k, 0) for k in ("tree_rounds", "sync_rounds", "device_rounds") if k in ssd}
    return {
        "completed": sum(o.finish_reason is not None for o in outs), "requests": len(prompt_ids),
        "failures": failures, "output_tokens": tokens, "wall_s": wall,
        "total_tok_s": tokens / wall if wall else 0.0, "decode_tok_s": m["decode_tok_s"],
        "avg_draft_ms": m["avg_draft_ms"], "avg_verify_ms": m["avg_verify_ms"],
        "tokens_per_round": m["tokens_per_round"] if m["rounds"] else 1.0,
        "acceptance": m["acceptance_rate"], "cache_hit_rate": m["cache_hit_rate"],
        "prefill_s": m["prefill_time"], "decode_s": m["decode_time"], "decode_steps": m["decode_steps"],
        "round_ms": round_ms, "host_ms": max(round_ms - 1e3 * (m["draft_time"] + m["verify_time"]) / steps, 0.0),
        "avg_build_ms": m["avg_draft_build_ms"], "avg_wait_ms": m["avg_channel_wait_ms"],
        "tree_share": (trees["tree_rounds"] / max(trees["tree_rounds"] + trees["sync_rounds"], 1)) if trees else None,
        "device_rounds": trees.get("device_rounds"),     # SSD rounds drafted like sync, tokens kept on the device
        "simulated": None if sim is None else {"acceptance": sim.acceptance, "hit": sim.hit},
        "graph_captures": captures() - c0,   # in this process; each one's cost (10-200 ms) is inside the figures
        "graph_replays": sum(r.graph.replays for r in eng.runners if getattr(r, "graph", None)),
        "eager_fallbacks": {r.name: dict(r.eager_fallbacks) for r in eng.runners if getattr(r, "eager_fallbacks", None)},
        "outputs": [o.token_ids for o in outs],
    }


SEED_K = 6        # the seed bench's K


def bench_k(a) -> int:
    """--k, else the draft alias's measured K (the shipped SmolLM2 draft: 2), else the seed's 6."""
    from ..config import default_of
    from ..models.registry import draft_and_k
    if a.k is not None:
        return a.k
    return draft_and_k(a.target or default_of("target"), "sync", a.draft, None)[1] or SEED_K


def bench(a, on_report=None) -> dict:
    """Every mode of --modes (or the one --spec/--async name), each over the sweep; one report.
    ``on_report(report_of_one_mode)`` runs BEFORE that mode's engine is closed: a close that hangs
    (worker processes) can then no longer swallow the results."""
    a.k = bench_k(a)
    runs, report = [], None
    if a.profile:
        open(a.profile, "w").close()
    for mode in bench_modes(a):
        rep = bench_mode(a, mode, on_report)
        runs += rep["runs"]
        report = report or rep
        if "hf" in rep:
            report["hf"] = rep["hf"]
    report["runs"] = runs
    report["mode"] = ",".join(bench_modes(a))
    return report


def _apply(eng, key: str, val) -> None:
    """Sweep values that live in the engine's speculation settings (the SIMULATED verifier's A and H)."""
    if key in ("acceptance", "hit") and eng.cfg.mode != "ar":
        name = "simulate_acceptance" if key == "acceptance" else "simulate_hit"
        if eng.cfg.mode == "sync" and name == "simulate_hit":
            return
        eng.update_spec(**{name: val})


def bench_mode(a, mode: str, on_report=None) -> dict:
    llm, mode = build_llm(a, mode)
    eng = llm.engine
    if getattr(a, "prompt_len", None):
        prompt_ids = random_prompts(a.numseqs, a.prompt_len, eng.runner.vocab_size, a.seed or 0)
    else:
        texts = load_prompts(a.prompts, a.numseqs)
        prompt_ids = [llm.encode(t, SamplingParams(chat=a.chat)) for t in texts]
    sweep_key, sweep_vals = parse_sweep(a.sweep)
    if mode == "ar" and sweep_key in ("acceptance", "hit", "k"):
        sweep_vals = [None]                       # nothing to simulate or vary without drafts: one AR row
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
        if val is not None:
            _apply(eng, sweep_key, val)
        eng.scheduler.max_batch_size = b
        log.info("warm-up: mode=%s k=%s b=%d temp=%s %s=%s", mode, k, b, temp, sweep_key, val)
        if has_graphs(eng):
            warm_graphs(eng, longest_context(prompt_ids, a.output_len, eng.k))
        for _ in range(WARMUP_PASSES):          # same shapes: graphs captured before timing, until a pass adds none
            if run_once(llm, prompt_ids, a.output_len, temp, k, None)["graph_captures"] == 0:
                break
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
        with open(a.profile, "a") as f:
            for row in profile:
                f.write(json.dumps(row) + "\n")
    if on_report is not None:
        on_report(report)
    llm.close()
    del llm, eng
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()                  # the next mode's engine gets the memory back
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
    if key not in ("k", "b", "temp", "acceptance", "hit") or not vals:
        raise ValueError(f"--sweep {spec!r}: expected k=2,4,6 or b=1,4,16 or temp=0,0.7 or (SIMULATED, with "
                         "--simulate-acceptance) acceptance=0.5,0.7,0.9 or hit=0.5,0.8")
    conv = float if key in ("temp", "acceptance", "hit") else int
    return key, [conv(v) for v in vals.split(",")]
