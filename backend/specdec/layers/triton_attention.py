"""Paged attention in Triton for few-query steps (decode, verify, draft), split over the KV span.

Each query token attends to the KV storage positions ``0..q_pos`` of its sequence, read straight
from the block table (no gathered copy). Two launches:

1. partial: grid (tokens, KV heads, splits). A program handles one token, one KV head with all
   g = H / KVH query heads that share it (K/V are loaded once for the group), and one chunk of
   the span, with an online softmax; it writes (max, sum, acc) for its chunk.
2. reduce: grid (tokens, KV heads). Merges the chunks' partial softmaxes.

Splitting the span keeps the GPU busy at batch 1, where tokens x KV heads is far below the
number of SMs. Custom (tree) masks are not handled here: those steps use the SDPA path.
Tested against the PyTorch path on CPU with TRITON_INTERPRET=1 and on the GPU.
"""
from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - CPU installs without triton
    HAVE_TRITON = False


if HAVE_TRITON:
    @triton.jit
    def _partial_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, seq_ptr, pos_ptr, part_ptr,
                        stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_tb,
                        scale, chunk,
                        G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
                        BLOCK_N: tl.constexpr, S: tl.constexpr):
        t = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        seq = tl.load(seq_ptr + t)
        qpos = tl.load(pos_ptr + t)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        gmask = g < G
        q = tl.load(q_ptr + t * stride_qt + (kvh * G + g)[:, None] * stride_qh + d[None, :],
                    mask=gmask[:, None], other=0.0).to(tl.float32)                      # [GP, D]
        start = split * chunk
        end = tl.minimum(start + chunk, qpos + 1)
        m_i = tl.full([GP], float("-inf"), tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nmask = n < end
            block = tl.load(tables_ptr + seq * stride_tb + n // BS, mask=nmask, other=0)
            off = block * stride_kb + (n % BS) * stride_ks + kvh * stride_kh
            k = tl.load(k_ptr + off[:, None] + d[None, :], mask=nmask[:, None], other=0.0).to(tl.float32)
            v = tl.load(v_ptr + off[:, None] + d[None, :], mask=nmask[:, None], other=0.0).to(tl.float32)
            s = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * scale                       # [GP, BLOCK_N]
            s = tl.where(nmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m_i = m_new
        # partial layout [T, KVH, S, GP, D + 2]: acc | m | l
        base = part_ptr + ((t * tl.num_programs(1) + kvh) * S + split) * GP * (D + 2)
        tl.store(base + g[:, None] * (D + 2) + d[None, :], acc)
        tl.store(base + g * (D + 2) + D, m_i)
        tl.store(base + g * (D + 2) + D + 1, l_i)

    @triton.jit
    def _reduce_kernel(part_ptr, out_ptr, stride_ot, stride_oh,
                       G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, S: tl.constexpr):
        t = tl.program_id(0)
        kvh = tl.program_id(1)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        base = part_ptr + (t * tl.num_programs(1) + kvh) * S * GP * (D + 2)
        m = tl.full([GP], float("-inf"), tl.float32)
        for s in range(S):
            m = tl.maximum(m, tl.load(base + s * GP * (D + 2) + g * (D + 2) + D))
        l = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, D], tl.float32)
        for s in range(S):
            ps = base + s * GP * (D + 2)
            ms = tl.load(ps + g * (D + 2) + D)
            w = tl.where(ms == float("-inf"), 0.0, tl.exp(ms - m))
            l += tl.load(ps + g * (D + 2) + D + 1) * w
            acc += tl.load(ps + g[:, None] * (D + 2) + d[None, :]) * w[:, None]
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptr + t * stride_ot + (kvh * G + g)[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=(g < G)[:, None])


def supported(head_dim: int) -> bool:
    return HAVE_TRITON and head_dim in (16, 32, 64, 128, 256)


def num_splits(tokens: int, kv_heads: int, max_kv: int, block_n: int, sms: int = 132) -> int:
    """Enough programs to fill the GPU twice over, each with at least one BLOCK_N of the span."""
    want = max(1, math.ceil(2 * sms / max(1, tokens * kv_heads)))
    return max(1, min(want, max_kv // block_n))


def triton_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           q_seq: torch.Tensor, q_pos: torch.Tensor, max_kv: int, scale: float,
                           block_n: int = 32) -> torch.Tensor:
    """q [T, H, D] (last dim contiguous); caches [num_blocks, BS, KVH, D]; block_tables [B, nb];
    q_seq/q_pos [T] int: each query's row in block_tables and its storage position.
    Returns [T, H, D] in q's dtype."""
    T, H, D = q.shape
    _, BS, KVH, _ = k_cache.shape
    G = H // KVH
    GP = triton.next_power_of_2(G)
    S = num_splits(T, KVH, max_kv, block_n)
    chunk = triton.cdiv(triton.cdiv(max_kv, S), block_n) * block_n
    part = torch.empty((T, KVH, S, GP, D + 2), dtype=torch.float32, device=q.device)
    out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    _partial_kernel[(T, KVH, S)](
        q, k_cache, v_cache, block_tables, q_seq, q_pos, part,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        scale, chunk, G=G, GP=GP, D=D, BS=BS, BLOCK_N=block_n, S=S)
    _reduce_kernel[(T, KVH)](part, out, out.stride(0), out.stride(1), G=G, GP=GP, D=D, S=S)
    return out
