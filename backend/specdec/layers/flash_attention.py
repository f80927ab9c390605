"""flash-attn-4 (the CuTe DSL package ``flash-attn-4``, Hopper/Blackwell) over the paged KV cache.

Its ``flash_attn_varlen_func`` reads this project's cache layout as is: K/V [num_blocks, BS, KVH, D] with
``page_table`` [B, pages] int32 and ``seqused_k`` [B] int32 (each sequence's KV length). ``causal=True``
is bottom-right aligned: query i of a sequence with q_len queries and seqused_k keys sees keys
``<= seqused_k - q_len + i``. Two layouts:

* varlen (eager steps, prefill included): q [T, H, D] with ``cu_seqlens_q`` [B + 1]. The engine's queries
  always end their sequence (q_start + q_len == kv_len), so bottom-right alignment is exact.
* uniform (CUDA-graph steps, B x Q padded): q [B, Q, H, D]. A row with n < Q real queries (padding after
  them, at storage position 0) gets ``seqused_k = start + Q``, so real query i still sees ``<= start + i``;
  the keys past the real end are seen only by padded queries, whose outputs are dropped. The page table
  gets ceil(Q / BS) extra columns (copies of column 0: in-range blocks) so those reads stay in range.

The package JIT-compiles each new shape on first call (seconds; FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
keeps them on disk) and costs ~100-180 us of host time per eager call, so ``auto`` uses it only inside
CUDA graphs (attention_choice.py). Its import is guarded: CPU installs and GPUs without it never load it.
"""
from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

HEAD_DIMS = (64, 96, 128)                 # head dims the SM90 forward kernel is built for
DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def _function():
    """flash_attn.cute.interface.flash_attn_varlen_func, or None when the package does not import."""
    try:
        from flash_attn.cute.interface import flash_attn_varlen_func
    except Exception as e:                # ImportError, or the CuTe DSL failing to find CUDA
        log.debug("flash-attn-4 is not available: %s", e)
        return None
    return flash_attn_varlen_func


@functools.cache
def available() -> bool:
    """Whether flash-attn-4 imports and a Hopper (SM90) or Blackwell (SM100/110) GPU is present."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] not in (9, 10, 11):
        return False
    return _function() is not None


def supports(dtype: torch.dtype | None, head_dim: int) -> bool:
    """Whether the kernel takes this dtype (None: any) and head dim."""
    return head_dim in HEAD_DIMS and (dtype is None or dtype in DTYPES)


def varlen_args(block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor,
                max_q: int, max_kv: int) -> dict:
    """Keyword arguments for a variable-length step. block_tables [B, nb] (int64); cu_seqlens_q [B + 1],
    kv_lens [B] (int32); max_q: the largest query count; max_kv: the largest KV length."""
    return dict(cu_seqlens_q=cu_seqlens_q.to(torch.int32), seqused_k=kv_lens.to(torch.int32),
                page_table=block_tables.to(torch.int32).contiguous(), max_seqlen_q=max_q, max_seqlen_k=max_kv)


def uniform_args(block_tables: torch.Tensor, q_pos: torch.Tensor, block_size: int) -> dict:
    """Keyword arguments for a uniform padded step, from device tensors only (CUDA-graph safe).
    block_tables [B, nb]; q_pos [B, Q] storage position of each query (padded queries: 0)."""
    B, Q = q_pos.shape
    start = (q_pos - torch.arange(Q, device=q_pos.device)).amax(1)         # [B] first real query's position
    extra = -(-Q // block_size)
    table = torch.cat([block_tables, block_tables[:, :1].expand(B, extra)], 1)
    return dict(seqused_k=(start + Q).to(torch.int32), page_table=table.to(torch.int32).contiguous(),
                max_seqlen_q=Q, max_seqlen_k=table.shape[1] * block_size)


def flash_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, args: dict,
                          scale: float) -> torch.Tensor:
    """q [T, H, D]; k_cache/v_cache [num_blocks, BS, KVH, D]; args from varlen_args or uniform_args.
    Returns [T, H, D]."""
    fn = _function()
    if fn is None:
        raise RuntimeError("flash-attn-4 (flash_attn.cute) is not importable")
    T, H, D = q.shape
    uniform = "cu_seqlens_q" not in args
    qq = q.view(args["page_table"].shape[0], -1, H, D) if uniform else q
    out = fn(qq, k_cache, v_cache, softmax_scale=scale, causal=True, **args)
    out = out[0] if isinstance(out, tuple) else out                       # (out, lse) in 4.0 betas
    return out.reshape(T, H, D)
