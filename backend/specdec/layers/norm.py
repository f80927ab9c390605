"""RMSNorm with HF's numerics (see fused.rms_norm)."""
from __future__ import annotations

import torch

from . import fused


class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor):
        """(norm(x + residual), x + residual)."""
        return fused.add_rms_norm(x, residual, self.weight, self.eps)
