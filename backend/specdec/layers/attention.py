"""Paged attention over a block-table KV cache.

Terms: a *slot* is one token's place in the pool, ``block_id * block_size + offset``. New
tokens write their K/V into ``slot_mapping`` slots (padded rows write into the sentinel block
the block manager never hands out), then each sequence attends over the first ``kv_len``
slots of its block table, with a visibility mask:

* default: query at storage index ``s`` sees KV storage indices ``<= s`` (causal), which covers
  prefill, decode, verify (K+1 queries) and the draft's multi-token catch-up alike;
* custom: a per-sequence boolean mask [q_len, kv_len], used by SSD's tree decode where
  branches are independent chains stored side by side.

Backends (the ``attention`` setting, resolved per step by attention_choice.resolve_backend):
``sdpa`` (PyTorch SDPA over the gathered blocks: any device, any mask), ``triton``
(layers/triton_attention.py: few-query steps, reads the block table directly), ``flash_attn``
(layers/flash_attention.py: flash-attn-4, CUDA only) and ``auto``. :func:`build_context` (eager,
variable-length steps, from host lists) and :func:`padded_context` (uniform padded steps, from device
tensors, what a CUDA graph captures) resolve the step's backend and build only that backend's inputs;
every layer then calls :func:`paged_attention`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F


from ..transfer import upload
from . import flash_attention
from .attention_choice import resolve_backend
from .triton_attention import triton_paged_attention

log = logging.getLogger(__name__)



@dataclass(slots=True)
class AttnContext:
    """Per-forward attention metadata, built once and shared by all layers."""

    slot_mapping: torch.Tensor        # [T] int64, flat slot each new token writes
    block_tables: torch.Tensor        # [B, max_blocks] int64
    q_index: torch.Tensor | None      # [B, max_q] int64, row of q for each padded query (None: uniform layout)
    out_index: torch.Tensor | None    # [T] int64, padded position (b * max_q + i) of each query row
    mask: torch.Tensor | None         # [B, 1, max_q, max_kv] bool (True = visible) or None
    max_kv: int
    is_causal: bool = False           # single fresh prefill: SDPA's causal path, no mask tensor
    grouped: tuple | None = None      # (g, mask with rows repeated g times), cached for all layers
    backend: str = "sdpa"             # this step's backend: "sdpa" | "triton" | "flash_attn"
    # set when backend is "triton" or "flash_attn" (the SDPA fields above are then None):
    q_pos: torch.Tensor | None = None         # [T] storage position of each query row
    cu_seqlens_q: torch.Tensor | None = None  # [B + 1] int32 first row of each sequence (None: uniform B x max_q)
    kv_lens: torch.Tensor | None = None       # [B] int32 KV length of each sequence (varlen only)
    max_q: int = 0                            # queries per sequence (uniform: exactly; varlen: the most)
    block_size: int = 0
    fa_args: dict | None = None               # flash-attn-4 inputs, derived once per forward (first layer)


def build_context(q_lens: list[int], kv_lens: list[int], q_starts: list[int], block_tables: list[list[int]],
                  slot_mapping: torch.Tensor, block_size: int, device: torch.device,
                  custom_masks: list[torch.Tensor | None] | None = None, backend: str = "sdpa") -> AttnContext:
    """Build an :class:`AttnContext` for an eager (variable-length) step.

    q_lens[b] queries of sequence b occupy storage indices q_starts[b] .. q_starts[b]+q_lens[b]-1
    and the sequence attends over kv_lens[b] slots. custom_masks[b], if given, is [q_lens[b], kv_lens[b]].
    backend: an ATTENTION_BACKENDS value or "torch"; resolved here for this step's shape."""
    B = len(q_lens)
    max_q, max_kv = max(q_lens), max(kv_lens)
    nb = (max_kv + block_size - 1) // block_size
    tables = torch.zeros((B, nb), dtype=torch.int64)
    for b, t in enumerate(block_tables):
        n = min(len(t), nb)
        tables[b, :n] = torch.as_tensor(t[:n], dtype=torch.int64)
    has_custom = custom_masks is not None and any(m is not None for m in custom_masks)
    choice = resolve_backend(backend, device, B, max_q, max_kv, custom_mask=has_custom)
    if choice != "sdpa":
        # one upload: [cu_seqlens_q (B + 1) | kv_lens (B) | q_pos (T)] int32
        q_lens_t = torch.tensor(q_lens, dtype=torch.int32)
        cu = torch.zeros(B + 1, dtype=torch.int32)
        torch.cumsum(q_lens_t, 0, out=cu[1:])
        q_pos = torch.cat([torch.arange(s, s + n, dtype=torch.int32) for s, n in zip(q_starts, q_lens)])
        packed = upload(torch.cat([cu, torch.tensor(kv_lens, dtype=torch.int32), q_pos]), device)
        return AttnContext(slot_mapping=upload(slot_mapping, device),
                           block_tables=upload(tables, device), q_index=None, out_index=None,
                           mask=None, max_kv=max_kv, backend=choice, q_pos=packed[2 * B + 1:],
                           cu_seqlens_q=packed[: B + 1], kv_lens=packed[B + 1: 2 * B + 1], max_q=max_q,
                           block_size=block_size)
    q_lens_t = torch.tensor(q_lens, dtype=torch.int64)
    starts = torch.cumsum(q_lens_t, 0) - q_lens_t                          # [B] first row of each seq
    ar = torch.arange(max_q, dtype=torch.int64)
    valid = ar[None, :] < q_lens_t[:, None]                                 # [B, max_q]
    q_index = out_index = None                # every row max_q queries: the flat rows are the padded layout
    if min(q_lens) < max_q:
        q_index = torch.where(valid, starts[:, None] + ar[None, :], torch.zeros(()).long())
        out_index = (torch.arange(B)[:, None] * max_q + ar[None, :])[valid]     # [T]
    mask = None
    is_causal = False
    if B == 1 and not has_custom and q_starts[0] + q_lens[0] == kv_lens[0]:
        # One sequence whose queries end the context: either plain decode (q_len 1, sees all)
        # or a fresh prefill (q_len == kv_len, causal). Anything else needs the explicit mask.
        if q_lens[0] == 1:
            pass
        elif q_lens[0] == kv_lens[0]:
            is_causal = True
        else:
            mask = _causal_mask(q_starts, max_q, max_kv, valid)
    else:
        mask = _causal_mask(q_starts, max_q, max_kv, valid)
        if has_custom:
            for b, m in enumerate(custom_masks):
                if m is not None:
                    mask[b, 0, : m.shape[0]] = False
                    mask[b, 0, : m.shape[0], : m.shape[1]] = m.to(torch.bool).cpu()
    return AttnContext(
        slot_mapping=upload(slot_mapping, device),
        block_tables=upload(tables, device),
        q_index=None if q_index is None else upload(q_index, device),
        out_index=None if out_index is None else upload(out_index, device),
        mask=None if mask is None else upload(mask, device),
        max_kv=max_kv, is_causal=is_causal,
    )


def padded_context(q_pos: torch.Tensor, block_tables: torch.Tensor, slot_mapping: torch.Tensor,
                   max_kv: int, backend: str = "sdpa") -> AttnContext:
    """Context for a uniform padded batch, built from device tensors only (so a CUDA graph can
    capture it): q_pos [B, Q] storage index of each query (padded queries: 0), block_tables
    [B, max_kv // block_size], slot_mapping [B * Q] (padded queries: the sentinel slot).
    backend: an ATTENTION_BACKENDS value or "torch"; resolved here for (B, Q, max_kv)."""
    B, Q = q_pos.shape
    choice = resolve_backend(backend, q_pos.device, B, Q, max_kv, graphed=True)
    if choice != "sdpa":
        return AttnContext(slot_mapping=slot_mapping, block_tables=block_tables, q_index=None, out_index=None,
                           mask=None, max_kv=max_kv, backend=choice, q_pos=q_pos.reshape(-1), max_q=Q,
                           block_size=max_kv // block_tables.shape[1])
    kv = torch.arange(max_kv, device=q_pos.device)
    mask = (kv[None, None, :] <= q_pos[:, :, None]).unsqueeze(1)            # [B, 1, Q, max_kv]
    return AttnContext(slot_mapping=slot_mapping, block_tables=block_tables, q_index=None, out_index=None,
                       mask=mask, max_kv=max_kv)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx: AttnContext,
                    scale: float) -> torch.Tensor:
    """q [T, H, D] -> [T, H, D] with the step's backend; k_cache/v_cache [num_blocks, BS, KVH, D] already
    hold this step's K/V. A flash_attn step whose dtype or head dim flash-attn-4 does not take runs the
    Triton kernel instead (logged once)."""
    if ctx.backend == "flash_attn":
        if flash_attention.supports(q.dtype, q.shape[-1]):
            if ctx.fa_args is None:
                ctx.fa_args = _flash_args(ctx)
            return flash_attention.flash_paged_attention(q, k_cache, v_cache, ctx.fa_args, scale)
        _warn_once(f"flash_attn does not take {q.dtype} with head_dim {q.shape[-1]}: using the Triton kernel")
    if ctx.backend in ("triton", "flash_attn"):
        return triton_paged_attention(q, k_cache, v_cache, ctx.block_tables, ctx.q_pos, ctx.max_kv, scale,
                                      queries=ctx.max_q, cu_seqlens_q=ctx.cu_seqlens_q)
    return torch_paged_attention(q, k_cache, v_cache, ctx, scale)


def _flash_args(ctx: AttnContext) -> dict:
    if ctx.cu_seqlens_q is not None:
        return flash_attention.varlen_args(ctx.block_tables, ctx.cu_seqlens_q, ctx.kv_lens, ctx.max_q, ctx.max_kv)
    B = ctx.block_tables.shape[0]
    return flash_attention.uniform_args(ctx.block_tables, ctx.q_pos.view(B, ctx.max_q), ctx.block_size)


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)


def _causal_mask(q_starts, max_q, max_kv, valid) -> torch.Tensor:
    qpos = torch.tensor(q_starts, dtype=torch.int64)[:, None] + torch.arange(max_q)[None, :]
    qpos = torch.where(valid, qpos, torch.zeros(()).long())                # pad rows see slot 0 only
    return (torch.arange(max_kv)[None, None, :] <= qpos[:, :, None]).unsqueeze(1)


def write_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """k_cache/v_cache [num_blocks, block_size, KVH, D]; k/v [T, KVH, D]; slot_mapping [T]."""
    kvh, d = k.shape[1], k.shape[2]
    k_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, kvh, d).index_copy_(0, slot_mapping, v)


def torch_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          ctx: AttnContext, scale: float) -> torch.Tensor:
    """q [T, H, D] -> [T, H, D], attending over the cache (already holding this step's K/V).

    Grouped-query attention without copying K/V per query head: the g = H / KVH query heads that
    share a KV head become g times more query rows of that head ([B, KVH, Q * g, D]), so SDPA
    runs plain multi-head attention (on CUDA: the memory-efficient kernel, which takes a mask)."""
    B = ctx.block_tables.shape[0]
    _, bs, kvh, d = k_cache.shape
    h = q.shape[1]
    blocks = ctx.block_tables.reshape(-1)          # index_select: on the CPU 5x faster than k_cache[tables]
    keys = k_cache.index_select(0, blocks).view(B, -1, kvh, d)[:, : ctx.max_kv].transpose(1, 2)   # [B, KVH, L, D]
    vals = v_cache.index_select(0, blocks).view(B, -1, kvh, d)[:, : ctx.max_kv].transpose(1, 2)
    qb = q.view(B, -1, h, d) if ctx.q_index is None else q[ctx.q_index]                     # [B, Q, H, D]
    Q, g = qb.shape[1], h // kvh
    if ctx.is_causal or g == 1:
        out = F.scaled_dot_product_attention(qb.transpose(1, 2), keys, vals, attn_mask=ctx.mask,
                                             is_causal=ctx.is_causal, scale=scale, enable_gqa=g > 1)
        out = out.transpose(1, 2)                                                            # [B, Q, H, D]
    else:
        qg = qb.view(B, Q, kvh, g, d).permute(0, 2, 1, 3, 4).reshape(B, kvh, Q * g, d)     # row = query * g + head
        out = F.scaled_dot_product_attention(qg, keys, vals, attn_mask=_grouped_mask(ctx, g, q.dtype), scale=scale)
        out = out.view(B, kvh, Q, g, d).permute(0, 2, 1, 3, 4)                              # [B, Q, KVH, g, D]
    out = out.reshape(-1, h, d)
    return out if ctx.out_index is None else out[ctx.out_index]


def _grouped_mask(ctx: AttnContext, g: int, dtype: torch.dtype) -> torch.Tensor | None:
    """The mask with each query row repeated g times, as the additive mask SDPA would make of the boolean
    one at every call (0 visible, -inf hidden: the same scores); built once per forward, shared by all
    layers."""
    if ctx.mask is None:
        return None
    if ctx.grouped is None or ctx.grouped[0] != g or ctx.grouped[1].dtype != dtype:
        mask = ctx.mask.repeat_interleave(g, dim=2)
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        ctx.grouped = (g, additive)
    return ctx.grouped[1]
