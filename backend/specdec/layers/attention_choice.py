"""Which attention backend serves a step: the ``attention`` setting resolved per step shape.

Settings (``attention.ATTENTION_BACKENDS``; "torch" is an old name of "sdpa"):

* ``sdpa``: PyTorch SDPA over the gathered blocks, every step.
* ``triton``: the Triton kernel for steps of <= TRITON_MAX_QUERIES queries per sequence (decode, verify,
  the draft loop), SDPA for longer ones (prefill).
* ``flash_attn``: flash-attn-4 for every step it can serve (prefill too, through its varlen path); needs
  the flash-attn-4 package on a Hopper or Blackwell GPU.
* ``auto``: SDPA on CPU/MPS. On CUDA, steps of <= TRITON_MAX_QUERIES queries per sequence take the first
  usable backend of the measured TABLE entry nearest their shape; flash-attn-4 only inside CUDA graphs
  (padded steps), since an eager call costs ~100-180 us of host time (FIELD-NOTES.md). Longer steps: SDPA.

Steps with custom masks (SSD tree rows) always use SDPA. The choice depends on Python ints only: no
host sync, and a CUDA graph captured for a shape keeps its backend.
"""
from __future__ import annotations

import math

import torch

TRITON_MAX_QUERIES = 32      # queries per sequence up to which the Triton kernel serves a step (auto, triton)

# Made by bench/gpu/attention_table.py (it prints a replacement for the lines below), MEASURED on one H100 80GB
# HBM3 (2026-12-07, eighth session; BENCHMARKS.md): every backend's us per call inside a CUDA graph, bf16, page 16,
# 32 query / 8 KV heads, head dim 128 (8B shape) and 64 (1B shape); flash-attn-4 4.0.0b36. Ordered by measured
# time (ties: triton). Where flash-attn-4 leads it does so by 1-20 %; where triton leads, by up to 4x (batch 1,
# long contexts: flash-attn-4 has no split-KV on SM90).
# key: (head dim bucket, batch bucket, queries per sequence, context bucket) -> backends, fastest first
TABLE_SOURCE = "bench/gpu/attention_table.py on NVIDIA H100 80GB HBM3, 2026-12-07"
TABLE: dict[tuple[int, int, int, int], tuple[str, ...]] = {
    (128, 1, 1, 512): ('triton', 'flash_attn', 'sdpa'),
    (128, 1, 5, 512): ('triton', 'flash_attn', 'sdpa'),
    (128, 1, 1, 2048): ('triton', 'flash_attn', 'sdpa'),
    (128, 1, 5, 2048): ('triton', 'flash_attn', 'sdpa'),
    (128, 1, 1, 8192): ('triton', 'flash_attn', 'sdpa'),
    (128, 1, 5, 8192): ('triton', 'flash_attn', 'sdpa'),
    (128, 8, 1, 512): ('flash_attn', 'triton', 'sdpa'),
    (128, 8, 5, 512): ('flash_attn', 'triton', 'sdpa'),
    (128, 8, 1, 2048): ('triton', 'flash_attn', 'sdpa'),
    (128, 8, 5, 2048): ('triton', 'flash_attn', 'sdpa'),
    (128, 8, 1, 8192): ('triton', 'flash_attn', 'sdpa'),
    (128, 8, 5, 8192): ('triton', 'flash_attn', 'sdpa'),
    (128, 16, 1, 512): ('flash_attn', 'triton', 'sdpa'),
    (128, 16, 5, 512): ('flash_attn', 'triton', 'sdpa'),
    (128, 16, 1, 2048): ('flash_attn', 'triton', 'sdpa'),
    (128, 16, 5, 2048): ('flash_attn', 'triton', 'sdpa'),
    (128, 16, 1, 8192): ('triton', 'flash_attn', 'sdpa'),
    (128, 16, 5, 8192): ('flash_attn', 'triton', 'sdpa'),
    (128, 64, 1, 512): ('triton', 'flash_attn', 'sdpa'),
    (128, 64, 5, 512): ('flash_attn', 'triton', 'sdpa'),
    (128, 64, 1, 2048): ('triton', 'flash_attn', 'sdpa'),
    (128, 64, 5, 2048): ('flash_attn', 'triton', 'sdpa'),
    (128, 64, 1, 8192): ('triton', 'flash_attn', 'sdpa'),
    (128, 64, 5, 8192): ('flash_attn', 'triton', 'sdpa'),
    (64, 1, 1, 512): ('triton', 'flash_attn', 'sdpa'),
    (64, 1, 5, 512): ('triton', 'flash_attn', 'sdpa'),
    (64, 1, 1, 2048): ('triton', 'flash_attn', 'sdpa'),
    (64, 1, 5, 2048): ('triton', 'flash_attn', 'sdpa'),
    (64, 1, 1, 8192): ('triton', 'flash_attn', 'sdpa'),
    (64, 1, 5, 8192): ('triton', 'flash_attn', 'sdpa'),
    (64, 8, 1, 512): ('triton', 'flash_attn', 'sdpa'),
    (64, 8, 5, 512): ('flash_attn', 'triton', 'sdpa'),
    (64, 8, 1, 2048): ('triton', 'flash_attn', 'sdpa'),
    (64, 8, 5, 2048): ('triton', 'flash_attn', 'sdpa'),
    (64, 8, 1, 8192): ('triton', 'flash_attn', 'sdpa'),
    (64, 8, 5, 8192): ('triton', 'flash_attn', 'sdpa'),
    (64, 16, 1, 512): ('flash_attn', 'triton', 'sdpa'),
    (64, 16, 5, 512): ('flash_attn', 'triton', 'sdpa'),
    (64, 16, 1, 2048): ('triton', 'flash_attn', 'sdpa'),
    (64, 16, 5, 2048): ('flash_attn', 'triton', 'sdpa'),
    (64, 16, 1, 8192): ('triton', 'flash_attn', 'sdpa'),
    (64, 16, 5, 8192): ('triton', 'flash_attn', 'sdpa'),
    (64, 64, 1, 512): ('triton', 'flash_attn', 'sdpa'),
    (64, 64, 5, 512): ('triton', 'flash_attn', 'sdpa'),
    (64, 64, 1, 2048): ('triton', 'flash_attn', 'sdpa'),
    (64, 64, 5, 2048): ('triton', 'flash_attn', 'sdpa'),
    (64, 64, 1, 8192): ('triton', 'flash_attn', 'sdpa'),
    (64, 64, 5, 8192): ('triton', 'flash_attn', 'sdpa'),
}

ALIASES = {"torch": "sdpa"}
KERNELS = ("flash_attn", "triton", "sdpa")     # what resolve_backend returns


def canonical(requested: str) -> str:
    """The setting's canonical name; ValueError names the allowed values."""
    from ..config import ATTENTION_BACKENDS
    name = ALIASES.get(requested, requested)
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {requested!r} is not one of {ATTENTION_BACKENDS} (or 'torch' = 'sdpa')")
    return name


def check_backend(requested: str, head_dim: int, dtype: torch.dtype) -> str:
    """Check the setting against a model once, at engine start; returns its canonical name. ValueError when
    the requested backend cannot serve this model (auto always can: it falls back per step)."""
    from . import flash_attention, triton_attention
    name = canonical(requested)
    if name == "triton" and not triton_attention.supported(head_dim):
        raise ValueError(f"attention='triton' needs the triton package and head_dim in [1, "
                         f"{triton_attention.MAX_HEAD_DIM}] (got {head_dim})")
    if name == "flash_attn":
        if not flash_attention.available():
            raise ValueError("attention='flash_attn' needs the flash-attn-4 package (flash_attn.cute) on a "
                             "Hopper/Blackwell GPU; it is not importable here")
        if not flash_attention.supports(dtype, head_dim):
            raise ValueError(f"attention='flash_attn' takes dtypes {flash_attention.DTYPES} and head dims "
                             f"{flash_attention.HEAD_DIMS} (got {dtype}, {head_dim})")
    return name


def nearest(x: int, buckets) -> int:
    """The bucket nearest x on a log scale (ties go to the larger one)."""
    lx = math.log(max(1, x))
    return min(sorted(buckets), key=lambda b: (abs(math.log(b) - lx), -b))


def table_order(num_seqs: int, queries_per_seq: int, max_kv: int, head_dim: int | None = None) -> tuple[str, ...]:
    """The TABLE entry nearest this step's shape (head dim unknown: the largest measured)."""
    keys = TABLE.keys()
    d = nearest(head_dim, {k[0] for k in keys}) if head_dim else max(k[0] for k in keys)
    b = nearest(num_seqs, {k[1] for k in keys})
    q = nearest(queries_per_seq, {k[2] for k in keys})
    c = nearest(max_kv, {k[3] for k in keys})
    return TABLE.get((d, b, q, c), KERNELS)


def resolve_backend(requested: str, device: torch.device | str, num_seqs: int, queries_per_seq: int, max_kv: int,
                    head_dim: int | None = None, *, graphed: bool = False, custom_mask: bool = False) -> str:
    """The backend ("flash_attn" | "triton" | "sdpa") that serves one step.

    requested: the setting (ATTENTION_BACKENDS or "torch"); num_seqs, queries_per_seq (the largest),
    max_kv (the span bound): the step's shape; head_dim if known (None: checked when the step runs, see
    attention.paged_attention); graphed: the step runs inside a CUDA graph (padded_context)."""
    from . import flash_attention, triton_attention
    name = canonical(requested)
    if custom_mask or name == "sdpa":
        return "sdpa"
    few = queries_per_seq <= TRITON_MAX_QUERIES
    triton_ok = triton_attention.supported(head_dim or 1)
    if name == "triton":
        return "triton" if few and triton_ok else "sdpa"
    if name == "flash_attn":
        if not flash_attention.available():
            raise ValueError("attention='flash_attn' needs the flash-attn-4 package (flash_attn.cute) on a "
                             "Hopper/Blackwell GPU; it is not importable here")
        return "flash_attn"
    if torch.device(device).type != "cuda" or not few:
        return "sdpa"
    for choice in table_order(num_seqs, queries_per_seq, max_kv, head_dim):
        if choice == "flash_attn" and graphed and flash_attention.available() and \
                (head_dim is None or flash_attention.supports(None, head_dim)):
            return choice
        if choice == "triton" and triton_ok:
            return choice
        if choice == "sdpa":
            return choice
    return "sdpa"
