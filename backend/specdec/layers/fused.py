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


# the plain versions stay reachable after enable_compile() swaps the names above: code that must not run
# the compiled ones (training the EAGLE head in grad mode, models/eagle.py) calls these
eager_rms_norm, eager_rotary, eager_silu_mul = rms_norm, rotary, silu_mul

_compiled = False
fused_rope_write = False     # q/k norm + rotary + K/V write in one Triton kernel (layers/rope_write.py), CUDA only


def enable_compile(device="cuda", dtype=None) -> bool:
    """Compile the functions above (idempotent). torch.compile is lazy, so each compiled function
    is tried once on small inputs on ``device``; any failure keeps all of them eager, logged."""
    global rms_norm, add_rms_norm, rotary, silu_mul, _compiled, fused_rope_write
    if _compiled:
        return True
    from . import rope_write
    fused_rope_write = rope_write.HAVE_TRITON and torch.device(device).type == "cuda"
    eager = (rms_norm, add_rms_norm, rotary, silu_mul)
    try:
        _raise_recompile_limit()
        opts = dict(dynamic=True, fullgraph=True)
        compiled = [_falls_back(torch.compile(fn, **opts), fn) for fn in eager]
        dtype = dtype or torch.bfloat16
        x = torch.randn(3, 64, device=device, dtype=dtype)
        w = torch.ones(64, device=device, dtype=dtype)
        q, k = torch.randn(3, 4, 64, device=device, dtype=dtype), torch.randn(3, 2, 64, device=device, dtype=dtype)
        cs = torch.randn(3, 1, 64, device=device, dtype=dtype)
        compiled[0](x, w, 1e-5)
        compiled[1](x, x, w, 1e-5)
        compiled[2](q, k, cs, cs)
        compiled[3](torch.randn(3, 128, device=device, dtype=dtype))
    except Exception as e:  # depends on the toolchain (triton, a C compiler)
        log.warning("torch.compile failed (%s: %s); elementwise ops stay eager", type(e).__name__, e)
        return False
    rms_norm, add_rms_norm, rotary, silu_mul = compiled
    _compiled = True
    log.info("elementwise ops compiled with torch.compile")
    return True


# Each compiled function is specialised per dtype, per 0/1-sized dimension and per model width: a process that
# builds several engines (a target and its draft, tests, the bench's backend sweep) passes torch's default of 8
# variants, and with fullgraph=True the ninth is a hard error (seen on an H100: head dims 64 and 128 in bf16 and
# fp16, attention_backends_engine.py).
RECOMPILE_LIMIT = 64


def _raise_recompile_limit() -> None:
    import torch._dynamo
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):             # the name before torch 2.6: cache_size_limit
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))


def _falls_back(compiled, eager):
    """compiled, or eager from its first failure on: a compile error at a new shape must not fail a request."""
    state = {"fn": compiled}

    def call(*args):
        try:
            return state["fn"](*args)
        except Exception as e:
            if state["fn"] is eager:
                raise
            log.warning("torch.compile of %s failed at a new shape (%s: %s); it runs eagerly from now on",
                        eager.__name__, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            state["fn"] = eager
            return eager(*args)
    call.__name__ = eager.__name__
    return call
