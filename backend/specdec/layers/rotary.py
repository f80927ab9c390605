"""Rotary position embedding (rotate-half layout, as in HF Llama/Qwen weights).

The inverse frequencies come from transformers' own RoPE initialisers, so every scaling type
transformers knows ("llama3", "linear", "yarn", "dynamic" at its base length, ...) is honoured
exactly as HF computes it.
"""
from __future__ import annotations

import torch


def inverse_frequencies(hf_config) -> tuple[torch.Tensor, float]:
    """[head_dim // 2] float32 inverse frequencies and the attention scaling factor."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        return inv, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"rope_type={rope_type!r} is not supported by this transformers version")
    inv, scale = ROPE_INIT_FUNCTIONS[rope_type](hf_config, None)
    return inv.float(), float(scale)


class RotaryEmbedding(torch.nn.Module):
    """cos/sin tables for positions [0, max_positions), looked up by position each forward."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float, max_positions: int):
        super().__init__()
        pos = torch.arange(max_positions, dtype=torch.float32)
        freqs = pos[:, None] * inv_freq[None, :]                  # [P, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)                   # [P, D]
        self.register_buffer("cos", emb.cos() * scaling, persistent=False)
        self.register_buffer("sin", emb.sin() * scaling, persistent=False)

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, D] for positions [T]: done once per forward, shared by every layer."""
        return self.cos[positions].to(dtype).unsqueeze(1), self.sin[positions].to(dtype).unsqueeze(1)
