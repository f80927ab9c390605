"""Small elementwise pieces of the decoder, written once as plain functions.

On CUDA (unless ``eager``), ``enable_compile()`` swaps each for a ``torch.compile`` version
(dynamic shapes, compiled once per dtype) so that norm, residual add, rotary and SiLU-gate
run as one fused kernel each; CUDA graphs then replay those kernels. Modules call these
through the module attribute (``fused.rms_norm``), so the swap reaches every layer.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF numerics: normalise in float32, cast back to x's dtype, then scale by the weight."""
    y = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    return weight * y.to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """(norm(x + residual), x + residual): the residual add fused with the next norm."""
    h = x + residual
    return rms_norm(h, weight, eps), h


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q [T, H, D], k [T, KVH, D], cos/sin [T, 1, D] (rotate-half layout)."""
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


_compiled = False


def enable_compile() -> bool:
    """Compile the functions above (idempotent). Returns False, with a log line, if it fails."""
    global rms_norm, add_rms_norm, rotary, silu_mul, _compiled
    if _compiled:
        return True
    try:
        opts = dict(dynamic=True, fullgraph=True)
        rms_norm, add_rms_norm = torch.compile(rms_norm, **opts), torch.compile(add_rms_norm, **opts)
        rotary, silu_mul = torch.compile(rotary, **opts), torch.compile(silu_mul, **opts)
        _compiled = True
    except Exception as e:  # pragma: no cover - depends on the toolchain
        log.warning("torch.compile unavailable (%s); elementwise ops stay eager", e)
    return _compiled
