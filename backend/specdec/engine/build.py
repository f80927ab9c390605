"""Putting the target side of an engine together: tensor-parallel ranks, the target model, its runner.

Functions, not a base class: the engine calls them once in its constructor. The draft side is
:class:`~specdec.draft.slot.DraftSlot`'s; both sides build their runners with runner/setup.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..models.loader import LoadedModel, context_limit, eos_token_ids, load_model, load_tokenizer
from ..runner.setup import build_runner

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Target:
    """The loaded target and what the engine derives from it once."""

    model: LoadedModel
    runner: object                 # PagedRunner or HFRunner
    tokenizer: object
    eos_ids: set[int]
    max_model_len: int             # the effective context limit: min(config, the model's)
    device: torch.device           # rank 0's device
    tp: object = None              # parallel.tp.TensorParallel when tensor_parallel_size > 1


def start_tensor_parallel(cfg: EngineConfig):
    """Check the target's shapes against tensor_parallel_size, then start ranks 1..N-1 (they load
    their shards while this process loads rank 0's)."""
    from ..models.llama import LlamaArch
    from ..models.loader import load_hf_config
    from ..models.registry import resolve
    from ..parallel.tp import TensorParallel, WorkerSpec, target_devices
    LlamaArch.from_hf(load_hf_config(resolve(cfg.target))).shard(cfg.tensor_parallel_size)
    devices = target_devices(cfg.device, cfg.tensor_parallel_size, cfg.devices)
    missing = [d for d in devices if d.startswith("cuda") and torch.device(d).index >= torch.cuda.device_count()]
    if missing:
        raise ValueError(f"tensor_parallel_size={cfg.tensor_parallel_size} needs devices {devices}; "
                         f"{missing} not available ({torch.cuda.device_count()} CUDA devices)")
    threads = torch.get_num_threads() if torch.device(cfg.device).type == "cpu" else None
    level = logging.getLevelName(logging.getLogger("specdec").getEffectiveLevel())
    return TensorParallel(WorkerSpec(cfg.target, cfg.dtype, cfg.impl, cfg.max_model_len, devices, threads, level))


def draft_shares_device(cfg: EngineConfig, device: torch.device, draft_device: torch.device) -> bool:
    """A draft model in this process on the target's device: the two KV pools split its memory."""
    d = cfg.spec.draft
    return cfg.mode == "sync" and d is not None and d != "ngram" and not cfg.spec.remote and draft_device == device


def build_target(cfg: EngineConfig, tp=None) -> Target:
    """Load the target (rank 0's shard with ``tp``), its tokenizer, and its runner."""
    device = tp.device if tp is not None else torch.device(cfg.device)
    m = load_model(cfg.target, device, cfg.dtype, cfg.impl, cfg.max_model_len, tp=None if tp is None else tp.group)
    tokenizer = load_tokenizer(m.folder)
    limit = context_limit(m.hf_config)
    max_model_len = min(cfg.max_model_len or limit, limit)
    draft_device = torch.device(cfg.draft_device) if cfg.draft_device else device
    share = 0.5 if draft_shares_device(cfg, device, draft_device) else 1.0
    runner = build_runner(m, device, cfg, name="target", max_model_len=max_model_len,
                          want_tokens=cfg.max_batch_size * (max_model_len + 2 * cfg.spec.k + 2), share=share, tp=tp)
    return Target(m, runner, tokenizer, eos_token_ids(m.folder, m.hf_config, tokenizer), max_model_len, device, tp)
