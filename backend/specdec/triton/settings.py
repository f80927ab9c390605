"""Engine settings of the Triton models: the ``parameters`` of their config.pbtxt, typed and checked.

One table (:data:`PARAMETERS`) lists every key, its default and meaning; ``specdec serve`` writes
the same keys and the model.py files read them through :func:`read_settings`. Models ignore keys
they do not use, so all models can carry the full set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields

import torch

from ..config import CacheConfig, EngineConfig, SpecConfig

DRAFT_LOCATIONS = ("in_target", "separate")


@dataclass(slots=True)
class Settings:
    target: str = "smollm2-135m"          # alias, HF folder or .gguf (also the tokenizer)
    draft: str = "ngram"                  # 'ngram', 'self:N', folder/alias; '' = none
    mode: str = "sync"                    # ar | sync | async
    k: int = 4                            # draft tokens per round (requests may ask for fewer)
    fan_out: str = "3"                    # SSD fan-out (async mode)
    dtype: str = "float32"
    engine_max_batch_size: int = 16       # sequences the engine batches (Triton's max_batch_size is 1)
    max_model_len: int = 0                # 0 = the model's own limit
    num_kv_blocks: int = 0                # 0 = derived from memory
    kv_cache_memory_gib: float = 0.0      # 0 = derived (GPU: a fraction of free memory; CPU: 1 GiB)
    seed: int = 0
    cpu_threads: int = 0                  # torch intra-op threads of a CPU instance; 0 = torch's default
    draft_location: str = "in_target"     # in_target | separate (the `draft` Triton model)
    rendezvous: str = "tcp://127.0.0.1:29500"   # target <-> draft channel (draft_location=separate)
    gpus: str = ""                        # target's GPUs, one tensor-parallel rank each ("0,1"; instance KIND_MODEL)
    default_max_tokens: int = 128         # when a request sends no max_tokens
    apply_chat_template: bool = False     # default of the apply_chat_template input
    max_queued_requests: int = 64         # requests waiting beyond the engine batch; more get UNAVAILABLE; -1 = no cap
    max_input_bytes: int = 0              # cap on text_input (UTF-8 bytes); 0 = max_model_len x the longest token

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
        self.target_gpus                   # validates gpus

    @property
    def target_gpus(self) -> list[int]:
        """The GPUs of the target's tensor-parallel ranks ([] = the instance's own device, TP 1)."""
        try:
            gpus = [int(g) for g in self.gpus.split(",") if g.strip()]
        except ValueError:
            raise ValueError(f"gpus={self.gpus!r}: expected comma-separated GPU indices such as '0,1'") from None
        if len(set(gpus)) < len(gpus) or any(g < 0 for g in gpus):
            raise ValueError(f"gpus={self.gpus!r}: expected distinct GPU indices >= 0")
        return gpus

    @property
    def draft_spec(self) -> str | None:
        """What the target engine's SpecConfig.draft is: a local draft, the remote channel, or none."""
        if self.mode == "ar" or not self.draft:
            return None
        if self.draft_location == "separate":
            return f"remote:{self.rendezvous}"
        return self.draft

    def engine_config(self, device: str, draft_device: str | None = None) -> EngineConfig:
        draft = self.draft_spec
        fan_out = int(self.fan_out) if self.fan_out.isdigit() else self.fan_out
        spec = SpecConfig(draft=draft, k=self.k, fan_out=fan_out)
        cache = CacheConfig(num_blocks=self.num_kv_blocks or None, memory_gib=self.kv_cache_memory_gib or None)
        devices = [f"cuda:{g}" for g in self.target_gpus] or None
        return EngineConfig(target=self.target, mode=self.mode if draft else "ar", device=devices[0] if devices else device,
                            draft_device=draft_device, dtype=self.dtype, max_batch_size=self.engine_max_batch_size,
                            max_model_len=self.max_model_len or None, seed=self.seed, cache=cache, spec=spec,
                            tensor_parallel_size=len(devices) if devices else 1, devices=devices)

    def as_parameters(self) -> dict[str, str]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out


PARAMETERS = tuple(f.name for f in fields(Settings))


def parse_parameters(raw: dict[str, str]) -> Settings:
    """Settings from string values (config.pbtxt); unknown keys are an error naming the allowed ones."""
    kinds = {f.name: f.type for f in fields(Settings)}
    kw = {}
    for key, text in raw.items():
        if key not in kinds:
            continue           # Triton's own keys (e.g. FORCE_CPU_ONLY_INPUT_TENSORS) pass through
        kind = kinds[key]
        try:
            if kind == "int":
                kw[key] = int(text)
            elif kind == "float":
                kw[key] = float(text)
            elif kind == "bool":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                kw[key] = text.lower() in ("true", "1", "yes")
            else:
                kw[key] = text
        except ValueError:
            raise ValueError(f"parameter {key}={text!r}: expected {kind}") from None
    return Settings(**kw)


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
