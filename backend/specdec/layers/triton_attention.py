"""Paged attention in Triton for few-query steps (decode, verify, the draft loop), split over the KV span.

Query row r of sequence b attends to KV storage positions ``0..q_pos[r]`` of b, read straight from the
block table (no gathered copy). One program takes a *query block* of one sequence (up to ``QBLK``
queries) together with the g = H / KVH query heads that share one KV head: an M = queries x g row tile.
It loads each K/V tile of its part of the span once and runs QK^T and PV as ``tl.dot``, so a verify
step of K+1 queries reads the K/V once, not K+1 times. Two launches:

1. attention: grid (sequences x query blocks, KV heads, splits), online softmax over one chunk of the
   span. With one split it normalizes and writes the output itself; otherwise it writes the chunk's
   (acc, max, sum) in float32.
2. reduce (splits > 1 only): grid (sequences x query blocks, KV heads, row blocks), merges the chunks.

Splitting the span keeps the GPU busy at batch 1, where sequences x KV heads is far below the number of
SMs. Each sequence's own span (the largest position among its queries, plus one) is cut into equal
chunks, so a CUDA graph captured for a KV bucket larger than the context does no idle work.

Rows of the query layout: *uniform* (B x Q padded batches, CUDA graphs: sequence b owns rows b*Q ..
b*Q+Q-1) or *varlen* (``cu_seqlens_q`` [B + 1]). Padded query rows need only a storage position that
exists in their sequence's table (the engine gives them position 0 and the sentinel block): they read
in-range memory and produce finite values, which the caller drops. Custom (tree) masks are not handled
here: those steps use the SDPA path. Head dims up to 256 (padded to a power of two), any g (padded).
Tested against a float64 reference on CPU (TRITON_INTERPRET=1); bench/gpu/attention_table.py checks it
against float32 and times it on the GPU.
"""
from __future__ import annotations

import functools
import math
import os

import torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # pragma: no cover - CPU installs without triton
    HAVE_TRITON = False

MAX_ROWS = 128            # rows (queries x padded g) of one program's tile; more queries -> more query blocks
MIN_SPLIT_SPAN = 128      # positions per split at least (a split below that costs more to merge than it saves)
MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634


if HAVE_TRITON:
    @triton.jit
    def _query_block(cu_ptr, seq, qb, uniform_q, QBLK: tl.constexpr, VARLEN: tl.constexpr):
        """First query row and query count of block qb of sequence seq (varlen: from cu_seqlens_q)."""
        if VARLEN:
            start = tl.load(cu_ptr + seq)
            count = tl.load(cu_ptr + seq + 1) - start
        else:
            start = seq * uniform_q
            count = uniform_q
        return start + qb * QBLK, tl.minimum(count - qb * QBLK, QBLK)

    @triton.jit
    def _attn_kernel(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, pos_ptr, cu_ptr, po_ptr, pml_ptr,
                     stride_qt, stride_qh, stride_ot, stride_oh, stride_kb, stride_ks, stride_kh,
                     stride_vb, stride_vs, stride_vh, stride_tb, qk_scale, uniform_q, num_qblocks,
                     G: tl.constexpr, GP: tl.constexpr, QBLK: tl.constexpr, MP: tl.constexpr,
                     D: tl.constexpr, DP: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
                     VARLEN: tl.constexpr, SPLIT: tl.constexpr, F32: tl.constexpr):
        pid = tl.program_id(0)                    # sequence * num_qblocks + query block
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        S = tl.num_programs(2)
        seq = pid // num_qblocks
        qb = pid % num_qblocks
        start, count = _query_block(cu_ptr, seq, qb, uniform_q, QBLK, VARLEN)
        r = tl.arange(0, MP)
        i = r // GP                               # query of the block
        g = r % GP                                # head within the group
        row_ok = (i < count) & (g < G)
        pos = tl.load(pos_ptr + start + i, mask=i < count, other=-1).to(tl.int32)     # [MP]
        kv_end = tl.max(pos, axis=0) + 1
        d = tl.arange(0, DP)
        dmask = d < D
        q = tl.load(q_ptr + (start + i)[:, None] * stride_qt + (kvh * G + g)[:, None] * stride_qh + d[None, :],
                    mask=row_ok[:, None] & dmask[None, :], other=0.0)                   # [MP, DP]
        if F32:
            q = q.to(tl.float32)
        chunk = tl.cdiv(tl.cdiv(kv_end, S), BLOCK_N) * BLOCK_N
        lo = split * chunk
        hi = tl.minimum(lo + chunk, kv_end)
        m_i = tl.full([MP], float("-inf"), tl.float32)
        l_i = tl.zeros([MP], tl.float32)
        acc = tl.zeros([MP, DP], tl.float32)
        for n0 in range(lo, hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nmask = n < hi
            blk = tl.load(tables_ptr + seq * stride_tb + n // BS, mask=nmask, other=0).to(tl.int64)
            koff = blk * stride_kb + (n % BS) * stride_ks + kvh * stride_kh
            voff = blk * stride_vb + (n % BS) * stride_vs + kvh * stride_vh
            kv_mask = nmask[:, None] & dmask[None, :]
            k = tl.load(k_ptr + koff[:, None] + d[None, :], mask=kv_mask, other=0.0)    # [BLOCK_N, DP]
            if F32:
                s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = s * qk_scale                                                            # log2 units
            s = tl.where((n[None, :] <= pos[:, None]) & nmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)                      # rows that see nothing yet
            alpha = tl.math.exp2(m_i - m_safe)
            p = tl.math.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + voff[:, None] + d[None, :], mask=kv_mask, other=0.0)    # [BLOCK_N, DP]
            if F32:
                pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        if SPLIT:
            # partials [B * num_qblocks, KVH, S, QBLK * GP, DP] and [..., 2] = (max, sum), float32
            R: tl.constexpr = QBLK * GP
            base = ((pid * tl.num_programs(1) + kvh) * S + split) * R
            rmask = r < R
            tl.store(po_ptr + (base + r)[:, None] * DP + d[None, :], acc, mask=rmask[:, None])
            tl.store(pml_ptr + (base + r) * 2, m_i, mask=rmask)
            tl.store(pml_ptr + (base + r) * 2 + 1, l_i, mask=rmask)
        else:
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
            tl.store(out_ptr + (start + i)[:, None] * stride_ot + (kvh * G + g)[:, None] * stride_oh + d[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dmask[None, :])

    @triton.jit
    def _reduce_kernel(po_ptr, pml_ptr, out_ptr, cu_ptr, stride_ot, stride_oh, uniform_q, num_qblocks, S,
                       G: tl.constexpr, GP: tl.constexpr, QBLK: tl.constexpr, RB: tl.constexpr,
                       D: tl.constexpr, DP: tl.constexpr, VARLEN: tl.constexpr):
        pid = tl.program_id(0)
        kvh = tl.program_id(1)
        seq = pid // num_qblocks
        qb = pid % num_qblocks
        start, count = _query_block(cu_ptr, seq, qb, uniform_q, QBLK, VARLEN)
        R: tl.constexpr = QBLK * GP
        r = tl.program_id(2) * RB + tl.arange(0, RB)
        i = r // GP
        g = r % GP
        rmask = r < R
        row_ok = (i < count) & (g < G) & rmask
        d = tl.arange(0, DP)
        base = (pid * tl.num_programs(1) + kvh) * S * R
        m = tl.full([RB], float("-inf"), tl.float32)
        for s in range(S):
            m = tl.maximum(m, tl.load(pml_ptr + (base + s * R + r) * 2, mask=rmask, other=float("-inf")))
        m = tl.where(m == float("-inf"), 0.0, m)                                      # rows no split saw
        l = tl.zeros([RB], tl.float32)
        acc = tl.zeros([RB, DP], tl.float32)
        for s in range(S):
            rows = base + s * R + r
            w = tl.math.exp2(tl.load(pml_ptr + rows * 2, mask=rmask, other=float("-inf")) - m)
            l += tl.load(pml_ptr + rows * 2 + 1, mask=rmask, other=0.0) * w
            acc += tl.load(po_ptr + rows[:, None] * DP + d[None, :], mask=rmask[:, None], other=0.0) * w[:, None]
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptr + (start + i)[:, None] * stride_ot + (kvh * G + g)[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (d < D)[None, :])


def supported(head_dim: int) -> bool:
    """Whether the kernel serves this head dim (the triton package is installed and head_dim <= 256)."""
    return HAVE_TRITON and 1 <= head_dim <= MAX_HEAD_DIM


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132                                 # the interpreter: an H100's count, so tests see GPU-like splits


def num_splits(programs: int, max_kv: int, sms: int = 132) -> int:
    """Splits of the KV span: enough programs to fill the GPU twice over, each split at least
    MIN_SPLIT_SPAN positions. programs = sequences x query blocks x KV heads."""
    want = math.ceil(2 * sms / max(1, programs))
    return max(1, min(want, max_kv // MIN_SPLIT_SPAN))


def launch_config(group: int, queries: int, head_dim: int) -> tuple[int, int, int]:
    """(queries per block, BLOCK_N, num_warps) for a group of g query heads per KV head."""
    gp = _next_pow2(group)
    qblk = min(_next_pow2(queries), max(1, MAX_ROWS // gp))
    rows = max(16, qblk * gp)
    block_n = 32 if head_dim > 128 or rows > 64 else 64
    return qblk, block_n, 8 if rows >= 128 else 4


def triton_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                           q_pos: torch.Tensor, max_kv: int, scale: float, *, queries: int,
                           cu_seqlens_q: torch.Tensor | None = None, block_n: int | None = None,
                           num_warps: int | None = None, splits: int | None = None) -> torch.Tensor:
    """Causal paged attention by storage position; returns [T, H, D] in q's dtype.

    q [T, H, D] (last dim contiguous, e.g. a view into the fused QKV); k_cache/v_cache
    [num_blocks, BS, KVH, D]; block_tables [B, nb] (int32 or int64); q_pos [T] storage position of each
    query row; max_kv: a bound on every sequence's span (sets the split count, so a CUDA graph keeps it).
    Layout: cu_seqlens_q None -> uniform, sequence b owns rows b*queries .. b*queries+queries-1;
    else cu_seqlens_q [B + 1] (int32) and ``queries`` >= the largest count (sets the tile shape).
    block_n, num_warps, splits override the defaults (for tuning)."""
    T, H, D = q.shape
    _, BS, KVH, Dk = k_cache.shape
    B = block_tables.shape[0]
    if Dk != D or H % KVH:
        raise ValueError(f"q [T, {H}, {D}] does not fit a cache with {KVH} KV heads of dim {Dk}")
    if not supported(D):
        raise ValueError(f"head_dim={D}: the Triton kernel takes 1..{MAX_HEAD_DIM} (and the triton package)")
    if queries < 1:
        raise ValueError(f"queries={queries}: must be >= 1")
    if cu_seqlens_q is None and T != B * queries:
        raise ValueError(f"uniform layout: T={T} rows must equal B={B} x queries={queries}")
    G = H // KVH
    GP = _next_pow2(G)
    qblk, bn, nw = launch_config(G, queries, D)
    bn, nw = block_n or bn, num_warps or nw
    nqb = -(-queries // qblk)
    S = splits or num_splits(B * nqb * KVH, max_kv, _sm_count(q.device))
    out = torch.empty((T, H, D), dtype=q.dtype, device=q.device)
    if T == 0 or B == 0:
        return out
    DP = max(16, _next_pow2(D))
    R = qblk * GP
    varlen = cu_seqlens_q is not None
    cu = cu_seqlens_q if varlen else q_pos            # unused pointer in the uniform layout
    if S > 1:
        po = torch.empty((B * nqb, KVH, S, R, DP), dtype=torch.float32, device=q.device)
        pml = torch.empty((B * nqb, KVH, S, R, 2), dtype=torch.float32, device=q.device)
    else:
        po = pml = out
    uq = 0 if varlen else queries
    _attn_kernel[(B * nqb, KVH, S)](
        q, k_cache, v_cache, out, block_tables, q_pos, cu, po, pml,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        scale * LOG2E, uq, nqb,
        G=G, GP=GP, QBLK=qblk, MP=max(16, R), D=D, DP=DP, BS=BS, BLOCK_N=bn, VARLEN=varlen, SPLIT=S > 1,
        F32=_float32_dots(q.dtype), num_warps=nw)
    if S > 1:
        RB = min(R, 16)
        _reduce_kernel[(B * nqb, KVH, -(-R // RB))](
            po, pml, out, cu, out.stride(0), out.stride(1), uq, nqb, S,
            G=G, GP=GP, QBLK=qblk, RB=RB, D=D, DP=DP, VARLEN=varlen, num_warps=4)
    return out


def _float32_dots(dtype: torch.dtype) -> bool:
    """float32 inputs: exact float32 dots (not TF32). bfloat16 under TRITON_INTERPRET: float32 too, because
    the interpreter's tl.dot gives garbage for bfloat16 operands (seen with triton 3.6)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
