"""Native Llama-family decoder (Llama 2/3.x, SmolLM2, Qwen2, Qwen3) over a paged KV cache.

One flat token batch per forward: ``input_ids`` [T] with their RoPE ``positions`` [T]; the
:class:`AttnContext` says where each token's K/V goes and what it may attend to. Q/K/V and
gate/up are fused into one matrix each at load time. Logits are computed only for the rows
that ask for them (``logits_index``).

Tensor parallelism (``tp``, layers/tensor_parallel.py): each rank builds the model with its shard's
shapes (:meth:`LlamaArch.shard`), all-reduces after ``o_proj`` and ``down``, and gathers the LM
head's vocabulary shards to rank 0, the only rank whose ``forward`` returns logits.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import fused, rope_write
from ..layers.attention import AttnContext, padded_context, paged_attention, write_kv
from ..layers.norm import RMSNorm
from ..layers.rotary import RotaryEmbedding, inverse_frequencies
from ..layers.tensor_parallel import TPGroup, VocabParallelEmbedding
from .draft_head import full_vocab_logits

NATIVE_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")
_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "mistral": "MistralForCausalLM"}


def architecture_of(cfg) -> str:
    """The checkpoint's architecture name; configs converted from GGUF may only carry model_type."""
    archs = getattr(cfg, "architectures", None)
    if archs:
        return archs[0]
    return _BY_MODEL_TYPE.get(getattr(cfg, "model_type", ""), getattr(cfg, "model_type", "?"))


@dataclass(slots=True)
class LlamaArch:
    """Shapes and options of a Llama-family checkpoint, read from its HF config."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    max_position_embeddings: int

    @classmethod
    def from_hf(cls, cfg) -> "LlamaArch":
        arch = architecture_of(cfg)
        if arch not in NATIVE_ARCHITECTURES:
            raise ValueError(f"architecture {arch!r} has no native implementation; native ones: {NATIVE_ARCHITECTURES}")
        if getattr(cfg, "use_sliding_window", False) or (arch == "MistralForCausalLM" and getattr(cfg, "sliding_window", None)):
            raise ValueError(f"{arch} with sliding-window attention is not supported natively; use impl='hf'")
        heads = cfg.num_attention_heads
        return cls(
            architecture=arch, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size, num_layers=cfg.num_hidden_layers, num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            rms_norm_eps=cfg.rms_norm_eps,
            qkv_bias=arch == "Qwen2ForCausalLM" or bool(getattr(cfg, "attention_bias", False)),
            qk_norm=arch == "Qwen3ForCausalLM",
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            max_position_embeddings=cfg.max_position_embeddings,
        )

    def kv_bytes_per_token(self, dtype: torch.dtype, num_layers: int | None = None) -> int:
        layers = self.num_layers if num_layers is None else num_layers
        return 2 * layers * self.num_kv_heads * self.head_dim * torch.empty((), dtype=dtype).element_size()

    def shard(self, tp: int) -> "LlamaArch":
        """The shapes each rank of a tensor-parallel group of ``tp`` holds: heads and intermediate
        size divided by tp, KV heads divided (or 1 replicated head when tp > KV heads); vocab_size
        stays the full vocabulary (the embedding and LM head shard it themselves)."""
        if tp == 1:
            return self
        for name, value in (("num_attention_heads", self.num_heads), ("intermediate_size", self.intermediate_size)):
            if value % tp:
                raise ValueError(f"{name}={value} is not divisible by tensor_parallel_size={tp}")
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            raise ValueError(f"num_key_value_heads={self.num_kv_heads} and tensor_parallel_size={tp}: one must "
                             "divide the other (KV heads are split across ranks, or replicated when tp > KV heads)")
        return dataclasses.replace(self, num_heads=self.num_heads // tp, num_kv_heads=max(1, self.num_kv_heads // tp),
                                   intermediate_size=self.intermediate_size // tp)

    def kv_head_start(self, rank: int, tp: int) -> int:
        """The first KV head held by ``rank``: the one its first query head (rank * H/tp) reads."""
        return rank * (self.num_heads // tp) // (self.num_heads // self.num_kv_heads)


class Attention(nn.Module):
    def __init__(self, a: LlamaArch, tp: TPGroup | None = None):
        super().__init__()
        self.h, self.kvh, self.d = a.num_heads, a.num_kv_heads, a.head_dim
        self.tp = tp                      # row-parallel o_proj: partial sums, all-reduced
        self.qkv = nn.Linear(a.hidden_size, (self.h + 2 * self.kvh) * self.d, bias=a.qkv_bias)
        self.o_proj = nn.Linear(self.h * self.d, a.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.d, a.rms_norm_eps) if a.qk_norm else None
        self.k_norm = RMSNorm(self.d, a.rms_norm_eps) if a.qk_norm else None
        self.scale = self.d ** -0.5

    def forward(self, x, rope, ctx: AttnContext, kv_cache: torch.Tensor):
        """x [T, hidden]; rope = (cos, sin) [T, 1, D]; kv_cache [2, num_blocks, block_size, KVH, D]."""
        qkv = self.qkv(x)
        if fused.fused_rope_write and qkv.is_cuda and rope_write.supported(self.d):      # one kernel for all of it
            qn, kn = (None, None) if self.q_norm is None else (self.q_norm.weight, self.k_norm.weight)
            q = rope_write.rope_and_write_kv(qkv, *rope, kv_cache[0], kv_cache[1], ctx.slot_mapping, self.h, self.kvh,
                                             self.d, qn, kn, self.q_norm.eps if qn is not None else 1e-6)
            o = paged_attention(q, kv_cache[0], kv_cache[1], ctx, self.scale)
            o = self.o_proj(o.reshape(-1, self.h * self.d))
            return o if self.tp is None else self.tp.all_reduce(o)
        q, k, v = qkv.split([self.h * self.d, self.kvh * self.d, self.kvh * self.d], dim=-1)
        q = q.view(-1, self.h, self.d)
        k = k.view(-1, self.kvh, self.d)
        v = v.view(-1, self.kvh, self.d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = fused.rotary(q, k, *rope)
        write_kv(kv_cache[0], kv_cache[1], k, v, ctx.slot_mapping)
        o = paged_attention(q, kv_cache[0], kv_cache[1], ctx, self.scale)      # ctx.backend picks the kernel
        o = self.o_proj(o.reshape(-1, self.h * self.d))
        return o if self.tp is None else self.tp.all_reduce(o)


class MLP(nn.Module):
    def __init__(self, a: LlamaArch, tp: TPGroup | None = None):
        super().__init__()
        self.gate_up = nn.Linear(a.hidden_size, 2 * a.intermediate_size, bias=False)
        self.down = nn.Linear(a.intermediate_size, a.hidden_size, bias=False)
        self.tp = tp                      # row-parallel down: partial sums, all-reduced

    def forward(self, x):
        y = self.down(fused.silu_mul(self.gate_up(x)))
        return y if self.tp is None else self.tp.all_reduce(y)


class DecoderLayer(nn.Module):
    def __init__(self, a: LlamaArch, tp: TPGroup | None = None):
        super().__init__()
        self.input_norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.attn = Attention(a, tp)
        self.post_norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.mlp = MLP(a, tp)

    def forward(self, x, residual, rope, ctx, kv_cache):
        """Residual stream kept apart so each add is fused with the norm after it."""
        if residual is None:
            h, residual = self.input_norm(x), x
        else:
            h, residual = self.input_norm.add_forward(x, residual)
        h, residual = self.post_norm.add_forward(self.attn(h, rope, ctx, kv_cache), residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, a: LlamaArch, hf_config, max_positions: int, tp: TPGroup | None = None):
        """a: the checkpoint's shapes; with ``tp``, this rank's shard of them is built (self.arch)."""
        super().__init__()
        self.arch = a if tp is None else a.shard(tp.size)
        self.tp = tp
        a = self.arch
        inv_freq, scaling = inverse_frequencies(hf_config)
        self.rotary = RotaryEmbedding(inv_freq, scaling, max_positions)
        if tp is None:
            self.embed = nn.Embedding(a.vocab_size, a.hidden_size)
            self.lm_head = nn.Linear(a.hidden_size, a.vocab_size, bias=False)
        else:                             # vocabulary rows of this rank (the loader zero-pads the last shard)
            self.embed = VocabParallelEmbedding(a.vocab_size, a.hidden_size, tp)
            self.lm_head = nn.Linear(a.hidden_size, self.embed.num_embeddings, bias=False)
        self.layers = nn.ModuleList(DecoderLayer(a, tp) for _ in range(a.num_layers))
        self.norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.head_ids: torch.Tensor | None = None    # an LM head over these tokens only (draft_head.py)

    def set_rotary(self, rotary: RotaryEmbedding) -> None:
        self.rotary = rotary

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttnContext,
                kv_caches: list[torch.Tensor], logits_index: torch.Tensor | None = None, return_hidden: bool = False):
        """input_ids, positions [T]; kv_caches: one [2, NB, BS, KVH, D] per layer.

        Returns float32 logits [N, V] for the rows in logits_index (all rows if None); with tensor
        parallelism on rank 0 only (the other ranks return None). ``return_hidden`` (hook for the EAGLE
        drafter, draft/eagle.py): (logits, hidden [T, H]), the final normed hidden state of every row.
        """
        x, residual = self.embed(input_ids), None
        rope = self.rotary.lookup(positions, x.dtype)
        for layer, cache in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, rope, ctx, cache)
        if return_hidden:
            if self.tp is not None:
                raise NotImplementedError("return_hidden (EAGLE drafts) with a tensor-parallel target")
            hidden = self.norm.add_forward(x, residual)[0]                 # [T, H]
            return self._logits(hidden if logits_index is None else hidden[logits_index]), hidden
        if logits_index is not None:
            x, residual = x[logits_index], residual[logits_index]
        return self._logits(self.norm.add_forward(x, residual)[0])

    def _logits(self, h: torch.Tensor) -> torch.Tensor | None:
        logits = self.lm_head(h)
        if self.head_ids is not None:
            return full_vocab_logits(logits, self.head_ids, self.arch.vocab_size)
        if self.tp is not None:           # [N, V / tp] shards -> [N, V] on rank 0
            logits = self.tp.gather_vocab(logits, self.arch.vocab_size)
            return None if logits is None else logits.float()
        return logits.float()

    def forward_padded(self, input_ids, positions, q_pos, block_tables, slot_mapping, kv_caches, max_kv: int,
                       backend: str = "torch", return_hidden: bool = False):
        """The same forward for a uniform padded batch (B rows x Q queries), from device tensors only:
        what a CUDA graph captures. input_ids/positions/slot_mapping [B * Q]; q_pos [B, Q]."""
        ctx = padded_context(q_pos, block_tables, slot_mapping, max_kv, backend)
        return self.forward(input_ids, positions, ctx, kv_caches, return_hidden=return_hidden)

    def first_layers(self, n: int) -> "LlamaForCausalLM":
        """A draft made of this model's first n layers, final norm and LM head (weights shared)."""
        if not 1 <= n < self.num_layers:
            raise ValueError(f"self:{n}: the number of layers must be in [1, {self.num_layers - 1}]")
        draft = object.__new__(LlamaForCausalLM)
        nn.Module.__init__(draft)
        draft.arch, draft.tp = self.arch, self.tp
        draft.rotary, draft.embed, draft.norm, draft.lm_head = self.rotary, self.embed, self.norm, self.lm_head
        draft.head_ids = self.head_ids
        draft.layers = nn.ModuleList(list(self.layers[:n]))
        return draft
