"""Paged attention over a block-table KV cache.

Terms: a *slot* is one token's place in the pool, ``block_id * block_size + offset``. New
tokens write their K/V into ``slot_mapping`` slots (padded rows write into the sentinel block
the block manager never hands out), then each sequence attends over the first ``kv_len``
slots of its block table, with a visibility mask:

* default: query at storage index ``s`` sees KV storage indices ``<= s`` (causal), which covers
  prefill, decode, verify (K+1 queries) and the draft's multi-token catch-up alike;
* custom: a per-sequence boolean mask [q_len, kv_len], used by SSD's tree decode where
  branches are independent chains stored side by side.

Backends: PyTorch SDPA over the gathered blocks (any device, any mask), and for few-query
steps without custom masks a Triton kernel reading the block table directly
(layers/triton_attention.py; ``attention="auto"`` picks it on CUDA when Triton is installed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    q_seq: torch.Tensor | None = None  # [T] row of each query in block_tables  } set when the Triton
    q_pos: torch.Tensor | None = None  # [T] storage position of each query      } kernel runs this step


TRITON_MAX_QUERIES = 32     # queries per sequence up to which the Triton kernel beats SDPA (decode, verify)


def use_triton(backend: str, q_lens: list[int] | int, custom: bool) -> bool:
    return backend == "triton" and not custom and (max(q_lens) if isinstance(q_lens, list) else q_lens) <= TRITON_MAX_QUERIES


def build_context(q_lens: list[int], kv_lens: list[int], q_starts: list[int], block_tables: list[list[int]],
                  slot_mapping: torch.Tensor, block_size: int, device: torch.device,
                  custom_masks: list[torch.Tensor | None] | None = None, backend: str = "torch") -> AttnContext:
    """Build an :class:`AttnContext`.

    q_lens[b] queries of sequence b occupy storage indices q_starts[b] .. q_starts[b]+q_lens[b]-1
    and the sequence attends over kv_lens[b] slots. custom_masks[b], if given, is [q_lens[b], kv_lens[b]].
    """
    B = len(q_lens)
    max_q, max_kv = max(q_lens), max(kv_lens)
    nb = (max_kv + block_size - 1) // block_size
    tables = torch.zeros((B, nb), dtype=torch.int64)
    for b, t in enumerate(block_tables):
        n = min(len(t), nb)
        tables[b, :n] = torch.tensor(t[:n], dtype=torch.int64)
    q_lens_t = torch.tensor(q_lens, dtype=torch.int64)
    starts = torch.cumsum(q_lens_t, 0) - q_lens_t                          # [B] first row of each seq
    ar = torch.arange(max_q, dtype=torch.int64)
    valid = ar[None, :] < q_lens_t[:, None]                                 # [B, max_q]
    q_index = torch.where(valid, starts[:, None] + ar[None, :], torch.zeros(()).long())
    out_index = (torch.arange(B)[:, None] * max_q + ar[None, :])[valid]     # [T]

    has_custom = custom_masks is not None and any(m is not None for m in custom_masks)
    if use_triton(backend, q_lens, has_custom):
        q_seq = torch.repeat_interleave(torch.arange(B), q_lens_t)
        q_pos = torch.cat([torch.arange(s, s + n) for s, n in zip(q_starts, q_lens)])
        return AttnContext(slot_mapping=slot_mapping.to(device, non_blocking=True),
                           block_tables=tables.to(device, non_blocking=True), q_index=None, out_index=None,
                           mask=None, max_kv=nb * block_size, q_seq=q_seq.to(device, non_blocking=True),
                           q_pos=q_pos.to(device, non_blocking=True))
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
        slot_mapping=slot_mapping.to(device, non_blocking=True),
        block_tables=tables.to(device, non_blocking=True),
        q_index=q_index.to(device, non_blocking=True),
        out_index=out_index.to(device, non_blocking=True),
        mask=None if mask is None else mask.to(device, non_blocking=True),
        max_kv=max_kv, is_causal=is_causal,
    )


def padded_context(q_pos: torch.Tensor, block_tables: torch.Tensor, slot_mapping: torch.Tensor,
                   max_kv: int, backend: str = "torch") -> AttnContext:
    """Context for a uniform padded batch, built from device tensors only (so a CUDA graph can
    capture it): q_pos [B, Q] storage index of each query (padded queries: 0), block_tables
    [B, max_kv // block_size], slot_mapping [B * Q] (padded queries: the sentinel slot)."""
    B, Q = q_pos.shape
    if use_triton(backend, Q, False):
        q_seq = torch.arange(B, device=q_pos.device).repeat_interleave(Q)
        return AttnContext(slot_mapping=slot_mapping, block_tables=block_tables, q_index=None, out_index=None,
                           mask=None, max_kv=max_kv, q_seq=q_seq, q_pos=q_pos.reshape(-1))
    kv = torch.arange(max_kv, device=q_pos.device)
    mask = (kv[None, None, :] <= q_pos[:, :, None]).unsqueeze(1)            # [B, 1, Q, max_kv]
    return AttnContext(slot_mapping=slot_mapping, block_tables=block_tables, q_index=None, out_index=None,
                       mask=mask, max_kv=max_kv)


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
    keys = k_cache[ctx.block_tables].view(B, -1, kvh, d)[:, : ctx.max_kv].transpose(1, 2)   # [B, KVH, L, D]
    vals = v_cache[ctx.block_tables].view(B, -1, kvh, d)[:, : ctx.max_kv].transpose(1, 2)
    qb = q.view(B, -1, h, d) if ctx.q_index is None else q[ctx.q_index]                     # [B, Q, H, D]
    Q, g = qb.shape[1], h // kvh
    if ctx.is_causal or g == 1:
        out = F.scaled_dot_product_attention(qb.transpose(1, 2), keys, vals, attn_mask=ctx.mask,
                                             is_causal=ctx.is_causal, scale=scale, enable_gqa=g > 1)
        out = out.transpose(1, 2)                                                            # [B, Q, H, D]
    else:
        qg = qb.view(B, Q, kvh, g, d).permute(0, 2, 1, 3, 4).reshape(B, kvh, Q * g, d)     # row = query * g + head
        out = F.scaled_dot_product_attention(qg, keys, vals, attn_mask=_grouped_mask(ctx, g), scale=scale)
        out = out.view(B, kvh, Q, g, d).permute(0, 2, 1, 3, 4)                              # [B, Q, KVH, g, D]
    out = out.reshape(-1, h, d)
    return out if ctx.out_index is None else out[ctx.out_index]


def _grouped_mask(ctx: AttnContext, g: int) -> torch.Tensor | None:
    """The mask with each query row repeated g times; built once per forward, shared by all layers."""
    if ctx.mask is None:
        return None
    if ctx.grouped is None or ctx.grouped[0] != g:
        ctx.grouped = (g, ctx.mask.repeat_interleave(g, dim=2))
    return ctx.grouped[1]
