"""The distillation run's one typed config, validated once; saved next to the checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..config import DTYPES, check_choice, check_float, check_int

ARCHS = ("llama", "eagle")

# fields a resumed run may change; the others shape the model or the corpus it was trained on
RESUMABLE_OVERRIDES = ("steps", "save_every", "device", "dtype", "gen_batch", "loss_chunk", "save_dtype", "standalone",
                       "base", "head_vocab", "gen_time_limit")
# fields that control one invocation only (never inherited by a resumed run)
RUN_CONTROL = ("stop_at", "time_limit", "schedule")


@dataclass(slots=True)
class DistillConfig:
    """What to distill into what, from which data, for how long.

    The corpus is (``num_prompts`` built-in training prompts + ``invent`` prompts the target writes)
    x (``samples`` completions sampled at temperature 1 + one greedy completion), each prompt +
    completion at most ``seq_len`` tokens.
    One step trains on ``batch`` of those sequences (loss on completion positions only).
    """

    out: str
    target: str = "smollm2-135m"
    arch: str = "llama"                 # "llama": the target's first layers; "eagle": a head on its features
    layers: int | None = None           # decoder layers of the draft (None: 4 for llama, 1 for eagle)
    eagle_steps: int = 3                # eagle: draft depths trained (training-time test)
    feature_weight: float = 1.0         # eagle: weight of the feature regression next to the KL
    steps: int = 1000
    batch: int = 32
    seq_len: int = 512
    lr: float = 5e-4
    warmup: int | None = None           # None = min(100, steps // 10)
    weight_decay: float = 0.0
    device: str = "cpu"
    dtype: str | None = None            # None = bfloat16 on CUDA, float32 elsewhere (autocast dtype)
    save_every: int = 200
    num_prompts: int | None = None      # None = all built-in training prompts
    samples: int = 2
    invent: int = 0                     # extra prompts the target writes itself (needs a chat template)
    synth_prompts: int = 0              # extra templated prompts (code, maths, multilingual, chat; prompts.py)
    gen_batch: int = 64
    gen_time_limit: float | None = None # stop generating after this many seconds (keep what was written)
    train_embeddings: bool = False      # False: embeddings/LM head frozen, shared with the target
    save_dtype: str = "bfloat16"
    base: str | None = None             # the manifest's name for the target (None = target; alias or path)
    standalone: bool = False            # export every tensor (a plain HF folder) instead of borrowing the target's
    head_vocab: int = 8192              # export an LM head over the N tokens the corpus writes most (0 = all)
    loss_chunk: int = 4096              # loss rows per chunk (bounds the [rows, vocab] logits in memory)
    seed: int = 0
    init_from: str | None = None        # llama: the draft's layers start from this exported draft (folder or alias)
    stop_at: int | None = None          # checkpoint and stop at this step (continue with resume)
    time_limit: float | None = None     # checkpoint and stop after this many seconds of training
    schedule: str = "steps"             # "time": the LR decays over min(steps, time_limit) (needs time_limit)

    def __post_init__(self):
        check_choice("arch", self.arch, ARCHS)
        if self.layers is None:
            self.layers = 1 if self.arch == "eagle" else 4
        check_int("layers", self.layers, 1, 8 if self.arch == "eagle" else 256)
        check_int("eagle_steps", self.eagle_steps, 1, 8)
        check_float("feature_weight", self.feature_weight, 0.0, 100.0)
        check_int("synth_prompts", self.synth_prompts, 0, 1_000_000)
        if self.gen_time_limit is not None:
            check_float("gen_time_limit", self.gen_time_limit, 0.0, 1e9, lo_open=True)
        check_int("steps", self.steps, 1)
        check_int("batch", self.batch, 1)
        check_int("seq_len", self.seq_len, 8)
        check_float("lr", self.lr, 0.0, 1.0, lo_open=True)
        if self.warmup is not None:
            check_int("warmup", self.warmup, 0, self.steps)
        check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        check_int("save_every", self.save_every, 1)
        if self.num_prompts is not None:
            check_int("num_prompts", self.num_prompts, 1)
        check_int("samples", self.samples, 0, 64)
        check_int("invent", self.invent, 0, 1_000_000)
        check_int("gen_batch", self.gen_batch, 1, 1024)
        check_int("loss_chunk", self.loss_chunk, 1)
        check_int("head_vocab", self.head_vocab, 0)
        if self.stop_at is not None:
            check_int("stop_at", self.stop_at, 1, self.steps)
        if self.time_limit is not None:
            check_float("time_limit", self.time_limit, 0.0, 1e9, lo_open=True)
        check_choice("schedule", self.schedule, ("steps", "time"))
        if self.init_from is not None and self.arch != "llama":
            raise ValueError(f"init_from={self.init_from!r} needs arch='llama' (it loads an exported few-layer draft), "
                             f"got arch={self.arch!r}")
        if self.schedule == "time" and self.time_limit is None:
            raise ValueError("schedule='time' needs time_limit (the LR decays over the time budget)")
        if self.dtype is not None and self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} is not one of ('float32', 'bfloat16') "
                             f"(float16 training would need loss scaling)")
        if self.save_dtype not in DTYPES:
            raise ValueError(f"save_dtype={self.save_dtype!r} is not one of {DTYPES}")

    @property
    def compute_dtype(self) -> str:
        return self.dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else min(100, self.steps // 10)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
