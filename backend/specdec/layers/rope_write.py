"""One kernel for what follows the qkv projection: q/k norm (Qwen3), rotary, and the K/V cache write.

Unfused, a layer runs q/k norm (2 kernels, Qwen3 only), rotary (1 compiled kernel) and two
``index_copy_`` launches for K and V. Here one Triton program per (token, head) reads its row of
the fused qkv output once: a query head is normed and rotated into ``q``; a KV head's key is normed,
rotated and written to the cache slot, and its value written beside it. Padded rows carry the
sentinel slot (a block never handed out), so they write there harmlessly.

Numerics follow the unfused path: the norm is computed in float32 and rounded to the model dtype
before its weight multiplies it; rotary is computed in float32 from the dtype-rounded cos/sin and
rounded once (the compiled path rounds the same way; SDPA-eager rounds after each product).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False


if HAVE_TRITON:
    @triton.jit
    def _rope_write_kernel(qkv_ptr, cos_ptr, sin_ptr, qn_ptr, kn_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                           stride_t, stride_cs, stride_qt, stride_kslot, stride_vslot, eps,
                           H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                           QK_NORM: tl.constexpr):
        t = tl.program_id(0)
        h = tl.program_id(1)
        d = tl.arange(0, D)
        is_q = h < H
        col = h * D                                     # q heads, then k heads, then v heads
        x = tl.load(qkv_ptr + t * stride_t + col + d).to(tl.float32)
        dtype = qkv_ptr.dtype.element_ty
        if QK_NORM:
            w = tl.where(is_q, tl.load(qn_ptr + d), tl.load(kn_ptr + d)).to(tl.float32)
            var = tl.sum(x * x, axis=0) / D
            x = (x / tl.sqrt(var + eps)).to(dtype).to(tl.float32)
            x = (x * w).to(dtype).to(tl.float32)
        cos = tl.load(cos_ptr + t * stride_cs + d).to(tl.float32)
        sin = tl.load(sin_ptr + t * stride_cs + d).to(tl.float32)
        partner = tl.where(d < HALF, d + HALF, d - HALF)
        xp = tl.load(qkv_ptr + t * stride_t + col + partner).to(tl.float32)
        if QK_NORM:
            var = tl.sum(xp * xp, axis=0) / D              # same row: the same variance
            xp = (xp / tl.sqrt(var + eps)).to(dtype).to(tl.float32)
            wp = tl.where(is_q, tl.load(qn_ptr + partner), tl.load(kn_ptr + partner)).to(tl.float32)
            xp = (xp * wp).to(dtype).to(tl.float32)
        rot = tl.where(d < HALF, -xp, xp)
        y = (x * cos + rot * sin).to(dtype)
        if is_q:
            tl.store(q_out_ptr + t * stride_qt + h * D + d, y)
        else:
            j = h - H
            slot = tl.load(slot_ptr + t)
            tl.store(k_cache_ptr + slot * stride_kslot + j * D + d, y.to(k_cache_ptr.dtype.element_ty))
            v = tl.load(qkv_ptr + t * stride_t + (H + KVH + j) * D + d)
            tl.store(v_cache_ptr + slot * stride_vslot + j * D + d, v.to(v_cache_ptr.dtype.element_ty))


def supported(head_dim: int) -> bool:
    return HAVE_TRITON and head_dim >= 16 and head_dim & (head_dim - 1) == 0


def rope_and_write_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_heads: int, num_kv_heads: int,
                      head_dim: int, q_norm: torch.Tensor | None = None, k_norm: torch.Tensor | None = None,
                      eps: float = 1e-6) -> torch.Tensor:
    """qkv [T, (H + 2 KVH) D] (rows contiguous); cos/sin [T, 1, D] or [T, D]; caches [NB, BS, KVH, D];
    slot_mapping [T]; q_norm/k_norm [D] (Qwen3) or None. Writes K/V into the caches; returns q [T, H, D]."""
    T = qkv.shape[0]
    q = torch.empty((T, num_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    if T == 0:
        return q
    cos2, sin2 = cos.reshape(T, head_dim), sin.reshape(T, head_dim)
    kc = k_cache.view(-1, num_kv_heads * head_dim)
    vc = v_cache.view(-1, num_kv_heads * head_dim)
    norm = q_norm is not None
    qn = q_norm if norm else qkv                                    # unused pointers when not normed
    kn = k_norm if norm else qkv
    _rope_write_kernel[(T, num_heads + num_kv_heads)](
        qkv, cos2, sin2, qn, kn, q, kc, vc, slot_mapping,
        qkv.stride(0), cos2.stride(0), q.stride(0), kc.stride(0), vc.stride(0), eps,
        H=num_heads, KVH=num_kv_heads, D=head_dim, HALF=head_dim // 2, QK_NORM=norm)
    return q
