"""The one runner setup, shared by the target, a local draft and the draft worker process.

:func:`build_runner` turns a loaded model into a runner with everything the GPU side has to
offer, decided the same way for every model:

1. the KV pool, sized by :func:`kv_pool_blocks` (a fixed block count, a memory budget, or a share
   of free GPU memory; at least one longest sequence);
2. the attention backend (``attention_backend``: auto | flash_attn | triton | sdpa; "auto" is resolved
   per step shape by layers/attention_choice.py);
3. the compiled small ops (``layers/fused.py``) when CUDA graphs are captured;
4. CUDA graphs for decode-shaped steps (decode, verify, the draft's steps): ``graphs`` "auto" captures
   them on CUDA, "off" runs every step eagerly, "padded" runs the graphs' static-buffer path without
   capture (on CPU: how tests check that path).

So a draft worker gets exactly the target's fast paths: it calls this with the same
:class:`~specdec.config.EngineConfig` the engine was built from.
"""
from __future__ import annotations

import logging

import torch

from ..config import CacheConfig, EngineConfig
from ..layers.attention_choice import check_backend
from ..models.loader import DTYPES, LoadedModel
from .hf import HFRunner
from .paged import PagedRunner

log = logging.getLogger(__name__)

CPU_KV_BUDGET_GIB = 1.0


def kv_pool_blocks(per_token_bytes: int, cache: CacheConfig, device: torch.device, want_tokens: int,
                   min_tokens: int, share: float = 1.0) -> int:
    """KV blocks for a pool that wants ``want_tokens`` tokens, within the memory budget: cache.num_kv_blocks
    when set, else kv_cache_memory_gib, else ``share`` x gpu_memory_fraction of free GPU memory (1 GiB
    x share on CPU); never fewer than ``min_tokens`` (one longest sequence)."""
    if cache.num_kv_blocks is not None:
        return cache.num_kv_blocks
    if cache.kv_cache_memory_gib is not None:
        budget = cache.kv_cache_memory_gib * 2**30
    elif device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * cache.gpu_memory_fraction * share
    else:
        budget = CPU_KV_BUDGET_GIB * 2**30 * share
    tokens = int(min(want_tokens, budget // per_token_bytes))
    bs = cache.block_size
    return max(tokens // bs, -(-min_tokens // bs))


def graph_mode(cfg: EngineConfig, device: torch.device) -> str | None:
    """"capture" (CUDA graphs), "padded" (their static-buffer path, no capture) or None (eager)."""
    if cfg.graphs == "padded":
        return "padded"
    if cfg.graphs == "auto" and device.type == "cuda":
        return "capture"
    return None


def build_runner(m: LoadedModel, device: torch.device, cfg: EngineConfig, *, name: str, max_model_len: int,
                 want_tokens: int, share: float = 1.0, max_q: int | None = None, module=None, tp=None):
    """A runner for ``m`` on ``device`` with the setup described above.

    max_model_len: the longest storage span of one sequence (the draft worker's includes glue and
    tree); want_tokens: the pool size to aim for; share: the part of free GPU memory this pool may
    use when another pool shares the device; max_q: queries per row up to which steps run padded
    (graphs), default K + 2; module: a module other than m.module (``self:N``); tp: rank 0's
    :class:`~specdec.parallel.tp.TensorParallel`, whose workers allocate the same pool."""
    module = module if module is not None else m.module
    dtype = DTYPES[cfg.dtype]
    if m.kind == "hf":
        return HFRunner(module, device, max_model_len, want_tokens, name)
    cache = cfg.cache
    per_token = m.arch.kv_bytes_per_token(dtype, module.num_layers)
    blocks = kv_pool_blocks(per_token, cache, device, want_tokens, max_model_len, share)
    channel = None
    if tp is not None:
        tp.connect(blocks, cache.block_size, max_model_len)          # the workers allocate the same pool
        channel = tp.channel
    runner = PagedRunner(module, device, dtype, cache.block_size, blocks, max_model_len, name, tp=channel)
    runner.attn_backend = check_backend(cfg.attention_backend, m.arch.head_dim, dtype)   # checked once; "auto" per step
    log.info("%s attention: %s", name, runner.attn_backend)
    mode = graph_mode(cfg, device)
    if mode == "capture":
        from ..layers import fused
        fused.enable_compile(device, dtype)
    if mode is not None:
        runner.enable_graphs(cfg.max_batch_size, max_q or max(2, cfg.spec.k + 2), capture=mode == "capture")
    return runner
