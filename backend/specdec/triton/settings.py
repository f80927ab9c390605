"""Settings of the Triton models: the ``parameters`` of their config.pbtxt, typed and checked.

Two kinds of keys, one namespace:

* every engine option of the config tree, by its flat name (config.py: ``target``, ``draft``,
  ``mode``, ``k``, ``fan_out``, ``fan_out_hit``, ``sampler_x``, ``backup``, ``dtype``,
  ``max_batch_size``, ``num_kv_blocks``, ``attention_backend``, ...), parsed by
  :func:`specdec.config.parse_flat` (lists comma-separated, "" = unset);
* the server's own keys (:class:`ServerSettings`): where the draft runs, the channel, request caps.

``specdec serve`` writes them and the model.py files read them through :func:`read_settings`.
Models ignore keys they do not use, so all models can carry the full set.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields

import torch

from ..config import EngineConfig, default_of, engine_config, flat_fields, format_flat, parse_flat
from ..models.registry import draft_and_k

DRAFT_LOCATIONS = ("in_target", "separate")


@dataclass(slots=True)
class ServerSettings:
    draft_location: str = "in_target"     # in_target | separate (the `draft` Triton model)
    rendezvous: str = "tcp://127.0.0.1:29500"   # target <-> draft channel (draft_location=separate)
    gpus: str = ""                        # target's GPUs, one tensor-parallel rank each ("0,1"; instance KIND_MODEL)
    default_max_tokens: int = 128         # when a request sends no max_tokens
    apply_chat_template: bool = False     # default of the apply_chat_template input
    max_queued_requests: int = 64         # requests waiting beyond the engine batch; more get UNAVAILABLE; -1 = no cap
    max_input_bytes: int = 0              # cap on text_input (UTF-8 bytes); 0 = max_model_len x the longest token
    cpu_threads: int = 0                  # torch intra-op threads of a CPU instance; 0 = torch's default
    capture_at_start: bool = True         # CUDA: capture the common steps' graphs before ready (engine/warmup.py)

    def __post_init__(self):
        if self.draft_location not in DRAFT_LOCATIONS:
            raise ValueError(f"draft_location={self.draft_location!r} is not one of {DRAFT_LOCATIONS}")
        if not self.rendezvous.startswith("tcp://"):
            raise ValueError(f"rendezvous={self.rendezvous!r}: expected tcp://HOST:PORT")
        if self.max_queued_requests < -1:
            raise ValueError(f"max_queued_requests={self.max_queued_requests} is out of range: allowed [-1, inf] "
                             "(-1 = no cap)")
        if self.max_input_bytes < 0:
            raise ValueError(f"max_input_bytes={self.max_input_bytes} is out of range: allowed [0, inf] (0 = derived)")
        gpu_list(self.gpus)


SERVER_KEYS = tuple(f.name for f in fields(ServerSettings))
PARAMETERS = SERVER_KEYS + tuple(flat_fields())


def gpu_list(gpus: str) -> list[int]:
    try:
        out = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise ValueError(f"gpus={gpus!r}: expected comma-separated GPU indices such as '0,1'") from None
    if len(set(out)) < len(out) or any(g < 0 for g in out):
        raise ValueError(f"gpus={gpus!r}: expected distinct GPU indices >= 0")
    return out


class Settings:
    """A deployment's settings: ``Settings(target=..., draft=..., k=..., draft_location=...)``.

    Engine options are kept by flat name (``options``; an unset one reads as its config default);
    the draft is resolved once (a speculative mode with no draft takes the alias's default draft).
    The engine options are checked here, so a bad parameter fails when the model loads."""

    def __init__(self, **values):
        unknown = sorted(set(values) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; allowed: {sorted(PARAMETERS)}")
        self.server = ServerSettings(**{k: v for k, v in values.items() if k in SERVER_KEYS})
        opts = {k: v for k, v in values.items() if k not in SERVER_KEYS}
        target = opts.get("target", default_of("target"))
        opts["draft"], k = draft_and_k(target, opts.get("mode"), opts.get("draft"), opts.pop("k", None))
        if k is not None:
            opts["k"] = k
        self.options = opts
        self.engine_config("cpu")                        # validates the engine options

    def __getattr__(self, name):
        if name in SERVER_KEYS:
            return getattr(self.server, name)
        if name in flat_fields():
            return self.options[name] if name in self.options else default_of(name)
        raise AttributeError(name)

    @property
    def mode(self) -> str:
        return self.options.get("mode") or ("sync" if self.draft else "ar")

    @property
    def target_gpus(self) -> list[int]:
        """The GPUs of the target's tensor-parallel ranks ([] = the instance's own device, TP 1)."""
        return gpu_list(self.server.gpus)

    @property
    def separate_draft(self) -> bool:
        """The draft runs in its own Triton model instance (the ``draft`` model)."""
        return self.server.draft_location == "separate" and self.mode != "ar" and bool(self.draft)

    @property
    def draft_spec(self) -> str | None:
        """What the target engine's SpecConfig.draft is: a local draft, the remote channel, or none."""
        if self.mode == "ar" or not self.draft:
            return None
        return f"remote:{self.server.rendezvous}" if self.separate_draft else self.draft

    def engine_config(self, device: str, draft_device: str | None = None) -> EngineConfig:
        """The target engine's config on ``device`` (the instance's; ``gpus`` splits it over several)."""
        opts = dict(self.options)
        draft = self.draft_spec
        devices = [f"cuda:{g}" for g in self.target_gpus] or None
        opts.update(draft=draft, mode=self.mode if draft else "ar", device=devices[0] if devices else str(device),
                    devices=devices, tensor_parallel_size=len(devices) if devices else 1, draft_device=draft_device)
        return engine_config(**opts)

    def worker_config(self, device) -> EngineConfig:
        """The draft worker's config (the ``draft`` model): the target's options, the draft on ``device``."""
        opts = dict(self.options)
        opts.update(mode=self.mode, device=str(device), draft_device=str(device))
        return engine_config(**opts)

    def as_parameters(self) -> dict[str, str]:
        """Every key as config.pbtxt text (engine options at their effective values)."""
        out = {}
        for f in fields(ServerSettings):
            v = getattr(self.server, f.name)
            out[f.name] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        for name in flat_fields():
            out[name] = format_flat(getattr(self, name))
        out["mode"] = self.mode
        return out

    def replace(self, **changes) -> "Settings":
        return Settings(**{**dataclasses.asdict(self.server), **self.options, **changes})


def parse_parameters(raw: dict[str, str]) -> Settings:
    """Settings from string values (config.pbtxt). Keys that are neither engine options nor server keys
    are Triton's own (e.g. FORCE_CPU_ONLY_INPUT_TENSORS) and pass through."""
    kinds = {f.name: f.type for f in fields(ServerSettings)}
    kw = {}
    for key, text in raw.items():
        if key in kinds:
            kw[key] = _parse_server(key, kinds[key], text)
        elif key in flat_fields():
            try:
                kw[key] = parse_flat(key, text)
            except ValueError as e:
                raise ValueError(f"parameter {e}") from None
    return Settings(**kw)


def _parse_server(key: str, kind: str, text: str):
    try:
        if kind == "int":
            return int(text)
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return text
    except ValueError:
        raise ValueError(f"parameter {key}={text!r}: expected {kind}") from None


def read_settings(args: dict) -> Settings:
    """Settings of a model from the ``args`` Triton passes to ``initialize``."""
    cfg = json.loads(args["model_config"])
    raw = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    return parse_parameters(raw)


def instance_device(args: dict) -> torch.device:
    """The device Triton assigned to this instance (KIND_GPU gpus: [N] -> cuda:N; KIND_CPU -> cpu)."""
    kind = args.get("model_instance_kind", "CPU")
    if kind == "GPU":
        return torch.device("cuda", int(args.get("model_instance_device_id", 0)))
    if kind == "MODEL" and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")
