"""What a runner is fed: per-sequence token lists (:class:`Feed`) and tokens that stay on the device.

A forward takes one :class:`Feed` per sequence. Tokens sampled on the device (the draft loop, verify
drafts) need not visit the host: the feed's host list holds placeholders from column ``col0`` on,
and ``device_tokens = (tensor [B, Qd], col0)`` supplies them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..transfer import upload


@dataclass(slots=True)
class Feed:
    """Tokens of one sequence to run through a model in this forward."""

    seq_id: int
    tokens: list[int]
    start: int                                # storage position of tokens[0]
    num_logits: int = 1                       # logits for the last num_logits tokens (0 = none)
    positions: list[int] | None = None        # RoPE positions when they differ from storage positions
    mask: torch.Tensor | None = None          # [len(tokens), start + len(tokens)] bool, custom visibility
    dummy: bool = False                       # a placeholder row: writes nowhere (sentinel slot), output unused


DeviceTokens = tuple  # (tensor [B, Qd] on the runner's device, col0): feed b's tokens[col0:] come from row b


def place_device_tokens(input_ids: torch.Tensor, feeds: list[Feed], device_tokens) -> None:
    """Overwrite host placeholders in the flat input_ids [T] with tokens that live on the device."""
    dt, col0 = device_tokens
    dst, src, row = [], [], 0
    for b, f in enumerate(feeds):
        n = len(f.tokens)
        for j in range(col0, n):
            dst.append(row + j)
            src.append(b * dt.shape[1] + j - col0)
        row += n
    if dst:
        idx = upload([dst, src], input_ids.device, torch.long)
        input_ids[idx[0]] = dt.reshape(-1)[idx[1]]


def run_epilogue(logits: torch.Tensor, feeds: list[Feed], device_tokens, epilogue) -> torch.Tensor:
    """An epilogue (see runner/cuda_graphs.py) over variable-length logits: pads them to [B, Q, V] (every
    feed's logits at the end of its row) with the fed ids [B, Q], as a graph step lays them out."""
    B, Q = len(feeds), max(len(f.tokens) for f in feeds)
    dev = logits.device
    counts = [f.num_logits for f in feeds]
    if all(c == Q for c in counts):
        padded = logits.view(B, Q, -1)
    else:
        padded = logits.new_zeros((B, Q, logits.shape[-1]))
        idx = [b * Q + len(f.tokens) - f.num_logits + i for b, f in enumerate(feeds) for i in range(f.num_logits)]
        padded.view(B * Q, -1)[upload(idx, dev, torch.long)] = logits
    ids = torch.zeros((B, Q), dtype=torch.long)
    for b, f in enumerate(feeds):
        ids[b, : len(f.tokens)] = torch.tensor(f.tokens, dtype=torch.long)
    ids = upload(ids, dev)
    if device_tokens is not None:
        dt, col0 = device_tokens
        ids[:, col0:col0 + dt.shape[1]] = dt[:, : Q - col0]
    rows = upload(epilogue.row_ints, dev, torch.long)
    return epilogue(padded, ids, rows)
