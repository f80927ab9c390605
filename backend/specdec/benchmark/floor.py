"""The bandwidth floor: a decode step must read every weight once (plus the K/V it attends to).

floor tok/s (batch b) = b * BW / (weight bytes + b * KV bytes per sequence), with BW measured on
the device by a large copy (bytes read + written), as METHOD.md asks, not taken from a datasheet.
"""
from __future__ import annotations

import time

import torch


def measure_bandwidth(device: torch.device, mib: int = 512, reps: int = 10) -> float:
    """Bytes/s of a device-to-device (or RAM-to-RAM) copy, counting bytes read plus written."""
    n = mib * 2**20 // 4
    x = torch.randn(n, device=device)
    y = torch.empty_like(x)
    for _ in range(2):
        y.copy_(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t
    return 2 * x.numel() * 4 * reps / dt


def weight_bytes(model) -> int:
    """Bytes a decode step reads: every unique parameter except an untied embedding table (gathered by row)."""
    seen, total = set(), 0
    lm = model.lm_head.weight
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if name.startswith("embed.") and p is not lm:
            continue
        total += p.numel() * p.element_size()
    return total


def floor_tok_s(bw: float, weights: int, kv_per_seq: float, batch: int) -> float:
    return batch * bw / (weights + batch * kv_per_seq)
