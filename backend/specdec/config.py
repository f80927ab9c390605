"""The configuration tree: one typed dataclass per concern, each default in one place.

    EngineConfig                  what an engine (or a draft worker) needs to start
      ├── cache: CacheConfig      paged KV cache sizing
      └── spec:  SpecConfig       what speculates and how much (draft, K, the SSD knobs)
    SamplingParams                per request

Every leaf field has a unique *flat name* (its own name), so one string-keyed mapping reaches the
whole tree: ``LLM(**options)``, the command-line flags (``--fan-out-hit 2,1,1``), the Triton
``config.pbtxt`` parameters and the draft worker's ``--config`` JSON are all built from it by
:func:`engine_config` / :func:`parse_flat`. Field help texts live here too (``metadata["help"]``)
and become the CLI's help.

Checks run once, in ``__post_init__``; errors name the field, the value and the allowed range, so
the same messages can travel unchanged to a Triton INVALID_ARG response. This module imports
nothing else from specdec.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from urllib.parse import urlparse

MODES = ("ar", "sync", "async")
DTYPES = ("float32", "bfloat16", "float16")
IMPLS = ("auto", "native", "hf")
ATTENTION_BACKENDS = ("auto", "flash_attn", "triton", "sdpa")
GRAPHS = ("auto", "off", "padded")
BACKUPS = ("jit", "fast", "auto")
DRAFT_PLACEMENTS = ("auto", "in_process", "worker")
TREE_POLICIES = ("auto", "always")
MAX_K = 16
MAX_FAN_OUT = 64
DEFAULT_FAN_OUT = 3


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


def check_choice(name: str, value, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")
    return value


def check_fan_out(name: str, fan: list[int], k: int) -> list[int]:
    """A fan-out list [F_0 .. F_K]: K+1 non-negative integers, at least one candidate in all."""
    if not isinstance(fan, (list, tuple)) or not all(isinstance(f, int) and not isinstance(f, bool) for f in fan):
        raise ValueError(f"{name}={fan!r} must be a list of K+1 = {k + 1} integers")
    if len(fan) != k + 1:
        raise ValueError(f"{name} has {len(fan)} entries: expected K+1 = {k + 1} (one per depth 0..{k})")
    if any(f < 0 for f in fan):
        raise ValueError(f"{name}={list(fan)!r}: entries must be >= 0")
    if sum(fan) < 1:
        raise ValueError(f"{name}={list(fan)!r}: the budget (sum) must be >= 1")
    return list(fan)


def _device_name(device: str) -> str:
    """"cuda" and "cuda:0" name the same device (as far as placement goes)."""
    return "cuda:0" if device == "cuda" else device


def parse_rendezvous(url: str) -> tuple[str, int]:
    u = urlparse(url)
    if u.scheme != "tcp" or not u.hostname or not u.port:
        raise ValueError(f"rendezvous {url!r}: expected tcp://HOST:PORT")
    return u.hostname, u.port


def self_draft_layers(draft: str | None) -> int | None:
    """N of a ``self:N`` draft (the target's first N layers), None for any other draft."""
    if draft is None or not draft.startswith("self:"):
        return None
    try:
        return int(draft.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"draft={draft!r}: expected 'self:N' with N an integer") from None


def _help(text: str) -> dict:
    return {"help": text}


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
    """Paged KV cache sizing: a fixed block count, a memory budget, or a share of free GPU memory."""

    block_size: int = field(default=16, metadata=_help("tokens per KV block"))
    num_kv_blocks: int | None = field(default=None, metadata=_help(
        "KV blocks of each model in the engine's process (default: from memory; a draft worker always sizes "
        "its pool from memory, since its sequences also hold the speculation tree)"))
    kv_cache_memory_gib: float | None = field(
        default=None, metadata=_help("KV memory budget (default: a share of free GPU memory; 1 GiB on CPU)"))
    gpu_memory_fraction: float = field(default=0.8, metadata=_help("share of free GPU memory the KV pools may take"))

    def __post_init__(self):
        check_int("block_size", self.block_size, 1, 4096)
        if self.num_kv_blocks is not None:
            check_int("num_kv_blocks", self.num_kv_blocks, 1)
        if self.kv_cache_memory_gib is not None:
            check_float("kv_cache_memory_gib", self.kv_cache_memory_gib, 0.0, 4096.0, lo_open=True)
        check_float("gpu_memory_fraction", self.gpu_memory_fraction, 0.0, 1.0, lo_open=True)


@dataclass(slots=True)
class SpecConfig:
    """What speculates and how much: draft kind, K, and the SSD knobs (fan-out, Saguaro, backup).

    draft: a folder/alias, ``self:N``, ``ngram``, or ``remote:tcp://HOST:PORT`` (a draft worker
    listening there, e.g. the Triton ``draft`` model). SSD (mode "async"): ``fan_out`` F gives
    the uniform list [F] * (K+1), or "geometric" (lists computed from the measured acceptance
    and cache-miss power law, with ``fan_out_budget`` candidates per sequence, default F(K+1));
    ``fan_out_hit`` / ``fan_out_miss`` are explicit lists (K+1 entries, equal sums) used after a
    cache hit / a backup speculation. ``sampler_x`` is Saguaro's C in (0, 1]. ``backup``: "jit"
    (draft the missed rows on the critical path), "fast" (random tokens) or "auto".
    """

    draft: str | None = field(default=None, metadata=_help(
        "draft: folder/alias, 'self:N', 'ngram' or 'remote:tcp://HOST:PORT' (default: the target's default draft)"))
    k: int = field(default=4, metadata=_help("draft tokens per round (K, the most with k_policy auto); requests may ask for fewer"))
    k_policy: str = field(default="fixed", metadata=_help(
        "fixed: K every round | auto: K per round from the measured acceptance and draft/verify costs, 0 (plain "
        "decoding) where speculation would not gain (spec/auto_k.py)"))
    draft_kv_append: bool = field(default=True, metadata=_help("keep the draft's K/V of accepted tokens"))
    ngram_max: int = field(default=4, metadata=_help("ngram draft: longest n-gram matched"))
    ngram_min: int = field(default=1, metadata=_help("ngram draft: shortest n-gram matched"))
    fan_out: int | str = field(default=DEFAULT_FAN_OUT, metadata=_help("SSD fan-out F per depth, or 'geometric'"))
    fan_out_hit: list[int] | None = field(default=None, metadata=_help("SSD fan-out list after a cache hit (K+1 entries)"))
    fan_out_miss: list[int] | None = field(default=None, metadata=_help("SSD fan-out list after a miss (K+1 entries)"))
    fan_out_budget: int | None = field(default=None, metadata=_help("SSD candidates per sequence for 'geometric'"))
    sampler_x: float | None = field(default=None, metadata=_help("Saguaro sampling C in (0, 1] (async only)"))
    backup: str = field(default="jit", metadata=_help("SSD backup on a cache miss: jit | fast | auto"))
    channel_timeout_s: float = field(default=120.0, metadata=_help("draft channel timeout (s)"))
    draft_placement: str = field(default="auto", metadata=_help(
        "SSD: where the draft runs: in_process (a second CUDA stream, or a thread on CPU, in the target's "
        "process; no channel) | worker (its own process, over a channel; the choice for a draft on another "
        "GPU) | auto (in_process when draft_device is the target's device, else worker)"))
    tree_policy: str = field(default="auto", metadata=_help(
        "SSD: build the speculation tree every round (always) or only while the measured hit rate makes it "
        "pay (auto: otherwise draft like sync decoding, re-measuring as it goes)"))
    simulate_acceptance: float | None = field(default=None, metadata=_help(
        "SIMULATED verification for benchmarks of random-weight shapes: each draft token is accepted with "
        "this probability instead of by the target (output is not the target's; never for exactness)"))
    simulate_hit: float | None = field(default=None, metadata=_help(
        "SIMULATED verification (with simulate_acceptance): probability that the recovery token is one the "
        "speculation tree forked (an SSD cache hit)"))

    def __post_init__(self):
        check_int("k", self.k, 1, MAX_K)
        check_choice("k_policy", self.k_policy, ("fixed", "auto"))
        check_choice("draft_placement", self.draft_placement, DRAFT_PLACEMENTS)
        check_choice("tree_policy", self.tree_policy, TREE_POLICIES)
        if self.simulate_acceptance is not None:
            check_float("simulate_acceptance", self.simulate_acceptance, 0.0, 1.0)
        if self.simulate_hit is not None:
            check_float("simulate_hit", self.simulate_hit, 0.0, 1.0)
            if self.simulate_acceptance is None:
                raise ValueError("simulate_hit needs simulate_acceptance (the SIMULATED verifier)")
        check_int("ngram_max", self.ngram_max, 1, 32)
        check_int("ngram_min", self.ngram_min, 1, self.ngram_max)
        check_choice("backup", self.backup, BACKUPS)
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
        hit, miss = self.fan_out_hit, self.fan_out_miss
        if hit is not None and miss is not None and sum(hit) != sum(miss):
            raise ValueError(f"fan_out_hit (sum {sum(hit)}) and fan_out_miss (sum {sum(miss)}) must have the same "
                             "budget (sum)")
        if miss is not None and hit is None and self.fan_out != "geometric" \
                and sum(miss) != self.fan_out * (self.k + 1):
            raise ValueError(f"fan_out_miss sums to {sum(miss)} but the hit list [fan_out={self.fan_out}] * (K+1) "
                             f"sums to {self.fan_out * (self.k + 1)}: give fan_out_hit too, or match the budget")
        if self.fan_out_budget is not None and hit is not None and self.fan_out_budget != sum(hit):
            raise ValueError(f"fan_out_budget={self.fan_out_budget} != sum(fan_out_hit)={sum(hit)}")
        check_float("channel_timeout_s", self.channel_timeout_s, 0.0, 86400.0, lo_open=True)
        if self.remote:
            parse_rendezvous(self.draft[len("remote:"):])
        self_draft_layers(self.draft)

    @property
    def remote(self) -> bool:
        return self.draft is not None and self.draft.startswith("remote:")


@dataclass(slots=True)
class EngineConfig:
    """Everything an engine needs to start: models, placement, batching, runner options, cache, speculation.

    A draft worker process is started from the same config (``draft_device`` is where it runs)."""

    target: str = field(default="smollm2-135m", metadata=_help("target: alias, HF folder or .gguf file"))
    mode: str = field(default="ar", metadata=_help("decoding mode: ar | sync | async (SSD)"))
    device: str = field(default="cpu", metadata=_help("target device: cpu, cuda:N, mps"))
    draft_device: str | None = field(default=None, metadata=_help("draft device (default: the target's)"))
    dtype: str = field(default="float32", metadata=_help("float32 | bfloat16 | float16"))
    max_batch_size: int = field(default=16, metadata=_help("sequences decoded together"))
    max_model_len: int | None = field(default=None, metadata=_help("context limit (default: the model's)"))
    max_prefill_tokens: int = field(default=8192, metadata=_help("prompt tokens prefilled in one step"))
    seed: int = field(default=0, metadata=_help("seed of the engine's random stream"))
    impl: str = field(default="auto", metadata=_help("model implementation: auto | native | hf"))
    graphs: str = field(default="auto", metadata=_help(
        "decode-shaped steps: auto (CUDA graphs + compiled small ops on CUDA) | off (eager) | "
        "padded (the graphs' static-buffer path without capture: CPU tests)"))
    attention_backend: str = field(default="auto", metadata=_help("attention: auto | flash_attn | triton | sdpa"))
    overlap: bool = field(default=True, metadata=_help(
        "overlapped steps: launch the next AR step (or greedy sync round) from the device's outcome before "
        "reading this one (graphs)"))
    tensor_parallel_size: int = field(default=1, metadata=_help("ranks of the target (the draft is never split)"))
    devices: list[str] | None = field(default=None, metadata=_help("one device per target rank (devices[0] == device)"))
    cache: CacheConfig = field(default_factory=CacheConfig)
    spec: SpecConfig = field(default_factory=SpecConfig)

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("impl", self.impl, IMPLS)
        check_choice("graphs", self.graphs, GRAPHS)
        if self.attention_backend == "torch":            # the name before "sdpa"
            self.attention_backend = "sdpa"
        check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        check_int("max_batch_size", self.max_batch_size, 1, 1024)
        check_int("max_prefill_tokens", self.max_prefill_tokens, 1)
        if self.max_model_len is not None:
            check_int("max_model_len", self.max_model_len, 2)
        draft = self.spec.draft
        if self.mode != "ar" and draft is None:
            raise ValueError(f"mode={self.mode!r} needs a draft: a path, an alias, 'self:N' or 'ngram'")
        if self.mode == "async" and draft == "ngram":
            raise ValueError("mode='async' needs a neural draft; 'ngram' is supported in mode='sync'")
        if self.spec.remote and self.mode == "ar":
            raise ValueError(f"draft={draft!r} needs mode 'sync' or 'async'")
        if self.spec.simulate_hit is not None and self.mode == "async" and not self.draft_in_process:
            raise ValueError("simulate_hit (SIMULATED cache hits) needs the draft in the target's process "
                             "(draft_placement in_process): the verifier picks recovery tokens from the tree")
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
            if self_draft_layers(self.spec.draft) is not None:
                raise ValueError(f"draft={self.spec.draft!r} shares the target's weights, which tensor_parallel_size={tp} "
                                 "splits; use a separate draft model")

    @property
    def draft_in_process(self) -> bool:
        """SSD with the draft in the target's process (draft_placement, "auto": on the target's device)."""
        if self.mode != "async" or self.spec.remote:
            return False
        p = self.spec.draft_placement
        same = _device_name(self.draft_device or self.device) == _device_name(self.device)
        return p == "in_process" or (p == "auto" and same)

    @property
    def uses_draft_worker(self) -> bool:
        """The draft runs in a worker process: SSD placed in a worker, or a remote worker in either mode."""
        return (self.mode == "async" and not self.draft_in_process) or self.spec.remote

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EngineConfig":
        d = json.loads(text)
        return cls(**{**d, "cache": CacheConfig(**d["cache"]), "spec": SpecConfig(**d["spec"])})


# --- flat names: one mapping reaches every leaf of the tree ----------------------------------------
_SECTIONS = {"cache": CacheConfig, "spec": SpecConfig}


def flat_fields() -> dict[str, tuple[str | None, dataclasses.Field]]:
    """flat name -> (section or None for EngineConfig itself, the dataclass field)."""
    out: dict[str, tuple[str | None, dataclasses.Field]] = {}
    for f in fields(EngineConfig):
        if f.name in _SECTIONS:
            for g in fields(_SECTIONS[f.name]):
                out[g.name] = (f.name, g)
        else:
            out[f.name] = (None, f)
    return out


def default_of(name: str):
    f = flat_fields()[name][1]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def engine_config(**options) -> EngineConfig:
    """An EngineConfig from flat options (any leaf of the tree by its name); the rest keep their defaults.

    ``mode`` None means "sync" when a draft is given, else "ar"; ``device`` None means devices[0]
    or "cpu". Unknown names are an error that lists the allowed ones."""
    known = flat_fields()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; allowed: {sorted(known)}")
    if options.get("mode") is None:
        options["mode"] = "sync" if options.get("draft") else "ar"
    if options.get("device") is None:
        devices = options.get("devices")
        options["device"] = devices[0] if devices else "cpu"
    top, parts = {}, {name: {} for name in _SECTIONS}
    for name, value in options.items():
        section = known[name][0]
        (top if section is None else parts[section])[name] = value
    return EngineConfig(**top, **{name: cls(**parts[name]) for name, cls in _SECTIONS.items()})


def flat_values(cfg: EngineConfig) -> dict:
    """The flat options of a config (the inverse of :func:`engine_config`)."""
    out = {}
    for name, (section, _) in flat_fields().items():
        out[name] = getattr(cfg if section is None else getattr(cfg, section), name)
    return out


def parse_flat(name: str, text: str):
    """A flat option's value from text (a CLI flag, a config.pbtxt parameter): typed by its field.

    Optional fields take "" (and "none") as None, except ``draft``, whose "" / "none" mean "no draft"
    (as opposed to unset: the target's default draft) and are kept for the caller to resolve
    (models.registry.default_draft). Lists are comma-separated; bools are true/false/1/0/yes/no."""
    known = flat_fields()
    if name not in known:
        raise ValueError(f"unknown option {name!r}; allowed: {sorted(known)}")
    kind = known[name][1].type.replace(" ", "")
    text = text.strip()
    if name == "draft":
        return text
    optional = kind.endswith("|None")
    if optional and text.lower() in ("", "none"):
        return None
    base = kind[: -len("|None")] if optional else kind
    try:
        if base == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if base == "int|str":                  # fan_out: an integer or a keyword
            return int(text) if text.lstrip("-").isdigit() else text
        if base == "list[int]":
            return [int(x) for x in text.split(",") if x.strip()]
        if base == "list[str]":
            return [x.strip() for x in text.split(",") if x.strip()]
        return text
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected {kind.replace('|', ' | ')}") from None


def format_flat(value) -> str:
    """The text form :func:`parse_flat` reads back."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
