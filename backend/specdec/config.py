"""One typed config per concern, each validated once in ``__post_init__``.

Errors name the field, the value and the allowed range, so the same messages can travel
unchanged to a Triton INVALID_ARG response.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

MODES = ("ar", "sync", "async")
DTYPES = ("float32", "bfloat16", "float16")
MAX_K = 16
MAX_FAN_OUT = 64


def _range_error(name: str, value, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is out of range: allowed {allowed}")


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer")
    if value < lo or (hi is not None and value > hi):
        raise _range_error(name, value, f"[{lo}, {hi if hi is not None else 'inf'}]")
    return value


def check_float(name: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number")
    value = float(value)
    bad = math.isnan(value) or value > hi or (value <= lo if lo_open else value < lo)
    if bad:
        raise _range_error(name, value, f"{'(' if lo_open else '['}{lo}, {hi}]")
    return value


@dataclass(slots=True)
class SamplingParams:
    """Per-request decoding parameters (the names follow vLLM and the OpenAI API).

    temperature 0 means greedy; top_k 0 means no top-k filter; num_draft_tokens overrides the
    engine's K for this request (0 = plain autoregressive decoding for this request).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 64
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    chat: bool = False
    num_draft_tokens: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self):
        self.temperature = check_float("temperature", self.temperature, 0.0, 100.0)
        self.top_p = check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        self.top_k = check_int("top_k", self.top_k, 0)
        self.max_tokens = check_int("max_tokens", self.max_tokens, 1)
        if self.seed is not None:
            self.seed = check_int("seed", self.seed, 0, 2**64 - 1)
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop={self.stop!r} must be a list of non-empty strings")
        if len(self.stop) > 16:
            raise _range_error("len(stop)", len(self.stop), "[0, 16]")
        if self.num_draft_tokens is not None:
            self.num_draft_tokens = check_int("num_draft_tokens", self.num_draft_tokens, 0, MAX_K)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(slots=True)
class CacheConfig:
    """Paged KV cache sizing. ``num_blocks`` None = derive from ``memory_gib`` (or free GPU memory)."""

    block_size: int = 16
    num_blocks: int | None = None
    memory_gib: float | None = None
    gpu_memory_fraction: float = 0.8

    def __post_init__(self):
        check_int("block_size", self.block_size, 1, 4096)
        if self.num_blocks is not None:
            check_int("num_blocks", self.num_blocks, 1)
        if self.memory_gib is not None:
            check_float("kv_cache_memory_gib", self.memory_gib, 0.0, 4096.0, lo_open=True)
        check_float("gpu_memory_fraction", self.gpu_memory_fraction, 0.0, 1.0, lo_open=True)


@dataclass(slots=True)
class SpecConfig:
    """What speculates and how much: draft kind, K, and the SSD knobs (fan-out, Saguaro, backup).

    draft: a folder/alias, ``self:N``, ``ngram``, or ``remote:tcp://HOST:PORT`` (a draft worker
    listening there, e.g. the Triton ``draft`` model). SSD (mode "async"): ``fan_out`` F gives
    the uniform list [F] * (K+1), or "geometric" (lists computed from the measured acceptance
    and cache-miss power law, with ``fan_out_budget`` candidates per sequence, default 3(K+1));
    ``fan_out_hit`` / ``fan_out_miss`` are explicit lists (K+1 entries, equal sums) used after a
    cache hit / a backup speculation. ``sampler_x`` is Saguaro's C in (0, 1]. ``backup``: "jit"
    (draft the missed rows on the critical path), "fast" (random tokens) or "auto".
    """

    draft: str | None = None
    k: int = 4
    draft_kv_append: bool = True
    ngram_max: int = 4
    ngram_min: int = 1
    fan_out: int | str = 3
    fan_out_hit: list[int] | None = None
    fan_out_miss: list[int] | None = None
    fan_out_budget: int | None = None
    sampler_x: float | None = None
    backup: str = "jit"
    channel_timeout_s: float = 120.0

    def __post_init__(self):
        from .spec.fanout import check_fan_out
        check_int("k", self.k, 1, MAX_K)
        check_int("ngram_max", self.ngram_max, 1, 32)
        check_int("ngram_min", self.ngram_min, 1, self.ngram_max)
        if self.backup not in ("jit", "fast", "auto"):
            raise ValueError(f"backup={self.backup!r} is not one of ('jit', 'fast', 'auto')")
        if self.sampler_x is not None:
            check_float("sampler_x", self.sampler_x, 0.0, 1.0, lo_open=True)
        if self.fan_out != "geometric":
            if isinstance(self.fan_out, str):
                raise ValueError(f"fan_out={self.fan_out!r} must be an integer or 'geometric'")
            check_int("fan_out", self.fan_out, 1, MAX_FAN_OUT)
        if self.fan_out_budget is not None:
            check_int("fan_out_budget", self.fan_out_budget, 1, MAX_FAN_OUT * (MAX_K + 1))
        if self.fan_out_hit is not None:
            self.fan_out_hit = check_fan_out("fan_out_hit", self.fan_out_hit, self.k)
        if self.fan_out_miss is not None:
            self.fan_out_miss = check_fan_out("fan_out_miss", self.fan_out_miss, self.k)
        if self.fan_out_hit is not None and self.fan_out_miss is not None \
                and sum(self.fan_out_hit) != sum(self.fan_out_miss):
            raise ValueError(f"fan_out_hit (sum {sum(self.fan_out_hit)}) and fan_out_miss (sum "
                             f"{sum(self.fan_out_miss)}) must have the same budget (sum)")
        if self.fan_out_miss is not None and self.fan_out_hit is None and self.fan_out != "geometric" \
                and sum(self.fan_out_miss) != self.fan_out * (self.k + 1):
            raise ValueError(f"fan_out_miss sums to {sum(self.fan_out_miss)} but the hit list [fan_out={self.fan_out}] "
                             f"* (K+1) sums to {self.fan_out * (self.k + 1)}: give fan_out_hit too, or match the budget")
        if self.fan_out_budget is not None and self.fan_out_hit is not None and self.fan_out_budget != sum(self.fan_out_hit):
            raise ValueError(f"fan_out_budget={self.fan_out_budget} != sum(fan_out_hit)={sum(self.fan_out_hit)}")
        check_float("channel_timeout_s", self.channel_timeout_s, 0.0, 86400.0, lo_open=True)
        if self.draft is not None and self.draft.startswith("remote:"):
            from .spec.transport import parse_rendezvous
            parse_rendezvous(self.draft[len("remote:"):])

    @property
    def remote(self) -> bool:
        return self.draft is not None and self.draft.startswith("remote:")


@dataclass(slots=True)
class EngineConfig:
    """Everything an engine needs to start: models, placement, batching, cache, speculation."""

    target: str = "smollm2-135m"
    mode: str = "ar"
    device: str = "cpu"
    draft_device: str | None = None
    dtype: str = "float32"
    max_batch_size: int = 16
    max_model_len: int | None = None
    max_prefill_tokens: int = 8192
    seed: int = 0
    impl: str = "auto"
    eager: bool = False
    attention: str = "auto"          # "auto" (Triton kernel on CUDA when installed), "torch", "triton"
    tensor_parallel_size: int = 1    # ranks of the target (the draft is never split)
    devices: list[str] | None = None  # one per target rank (devices[0] == device); None = derived from device
    cache: CacheConfig = field(default_factory=CacheConfig)
    spec: SpecConfig = field(default_factory=SpecConfig)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {MODES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {DTYPES}")
        if self.attention not in ("auto", "torch", "triton"):
            raise ValueError(f"attention={self.attention!r} is not one of ('auto', 'torch', 'triton')")
        if self.impl not in ("auto", "native", "hf"):
            raise ValueError(f"impl={self.impl!r} is not one of ('auto', 'native', 'hf')")
        check_int("max_batch_size", self.max_batch_size, 1, 1024)
        check_int("max_prefill_tokens", self.max_prefill_tokens, 1)
        if self.max_model_len is not None:
            check_int("max_model_len", self.max_model_len, 2)
        if self.mode != "ar" and self.spec.draft is None:
            raise ValueError(f"mode={self.mode!r} needs a draft: a path, an alias, 'self:N' or 'ngram'")
        if self.mode == "async" and self.spec.draft == "ngram":
            raise ValueError("mode='async' needs a neural draft; 'ngram' is supported in mode='sync'")
        if self.spec.remote and self.mode == "ar":
            raise ValueError(f"draft={self.spec.draft!r} needs mode 'sync' or 'async'")
        if self.spec.sampler_x is not None and self.mode != "async":
            raise ValueError(f"sampler_x={self.spec.sampler_x} (Saguaro sampling) needs mode='async'; got mode={self.mode!r}")
        self._check_parallel()

    def _check_parallel(self) -> None:
        tp = check_int("tensor_parallel_size", self.tensor_parallel_size, 1, 64)
        if self.devices is not None:
            self.devices = [str(d) for d in self.devices]
            if len(self.devices) != tp:
                raise ValueError(f"devices={self.devices} has {len(self.devices)} entries; "
                                 f"tensor_parallel_size={tp} needs one per rank")
            if self.devices[0] != self.device:
                raise ValueError(f"device={self.device!r} must be devices[0]={self.devices[0]!r} (rank 0's device)")
            kinds = {d.split(":")[0] for d in self.devices}
            if len(kinds) > 1:
                raise ValueError(f"devices={self.devices} mixes device types; use all CPU or all CUDA")
            if "cuda" in kinds and len(set(self.devices)) < tp:
                raise ValueError(f"devices={self.devices}: each rank needs its own GPU")
        if tp > 1:
            if self.impl == "hf":
                raise ValueError(f"tensor_parallel_size={tp} needs the native Llama-family implementation; got impl='hf'")
            if self.spec.draft is not None and self.spec.draft.startswith("self:"):
                raise ValueError(f"draft={self.spec.draft!r} shares the target's weights, which tensor_parallel_size={tp} "
                                 "splits; use a separate draft model")
