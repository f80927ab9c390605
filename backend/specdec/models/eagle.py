"""An EAGLE-style draft head: drafts from the target's own last hidden states (Li et al. 2024, EAGLE).

Terms. The target's *feature* f_j is its final (normed) hidden state at position j, the vector its
LM head turns into the distribution of token x_{j+1}. The head works one position behind the
tokens: its input at position j is (f_j, x_{j+1}) -- ``fc`` of [embed(x_{j+1}), f_j] -- and its
output g_j (after its decoder layers and final norm) is a guess of f_{j+1}, so the target's LM
head applied to g_j drafts x_{j+2}. Drafting further feeds g back as the next input feature:
position j+1 gets (g_j, d_1), and so on (the head is autoregressive over features).

Shapes: H = the target's hidden size; the head's layers are Llama decoder layers of the target's
shapes (``EagleArch``), its own small KV cache holds K/V per position of its own layers.

Two forwards over the same weights:

* :meth:`EagleHead.forward_train`, teacher-forced over whole sequences ([B, L]), ``steps`` levels
  deep ("training-time test"): level 1 reads the target's features; level s reads level s-1's
  outputs, shifted one position, and attends to level-1 keys up to j-s+1 and to its own
  chain of guessed positions -- exactly what the cached forward sees on its s-th draft step.
* :meth:`EagleHead.forward_cached`, one padded batch of rows [Bb, Q] over a dense per-slot KV
  cache (``EagleCache``): writes K/V at (slot, position), attends to the slot's positions <= the
  query's. Stale entries past a row's length are never read (positions mask them), so rolling a
  row back is free. Fixed shapes: CUDA-graph friendly (draft/eagle.py).

The head stores only its own weights; the embedding and LM head are the target's (borrowed at load,
checked by checksum, ``models/shared_weights.py``), optionally an LM head over the N tokens the
target writes most (``head_tokens.safetensors``, models/draft_head.py).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.fused import eager_rms_norm, eager_rotary, eager_silu_mul
from .draft_head import HEAD_FILE, full_vocab_logits, load_head_tokens, restrict_head, save_head_tokens
from .llama import LlamaArch
from .shared_weights import checksum, read_manifest, write_manifest

# The head's small ops are layers/fused.py's eager ones: the names there become torch.compile'd
# functions once an engine on CUDA enables compilation, which would recompile them for training (grad
# mode) in the middle of a distillation run. Inside the drafter's CUDA graph eager is cheap.


class RMSNorm(nn.Module):
    """HF numerics (fused.eager_rms_norm): normalise in float32, cast back, scale by the weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return eager_rms_norm(x, self.weight, self.eps)


CONFIG_FILE = "config.json"          # {"architectures": ["EagleHead"], "model_type": "specdec_eagle", shapes...}
ARCHITECTURE = "EagleHead"
WEIGHTS_FILE = "model.safetensors"


@dataclass(slots=True)
class EagleArch:
    """Shapes of the head (its target's, with ``num_layers`` decoder layers of its own)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    vocab_size: int

    @classmethod
    def from_target(cls, t, num_layers: int = 1) -> "EagleArch":
        """t: the target's :class:`~specdec.models.llama.LlamaArch`."""
        if not 1 <= num_layers <= 8:
            raise ValueError(f"eagle layers={num_layers} is out of range: allowed [1, 8]")
        return cls(t.hidden_size, t.intermediate_size, num_layers, t.num_heads, t.num_kv_heads, t.head_dim,
                   t.rms_norm_eps, t.vocab_size)

    @classmethod
    def from_hf(cls, cfg, num_layers: int = 1) -> "EagleArch":
        """From the target's HF config (training uses the HF teacher), read as the native model reads it."""
        return cls.from_target(LlamaArch.from_hf(cfg), num_layers)


def level_mask(L: int, s: int, device=None) -> torch.Tensor:
    """[L, s * L] bool: which keys query j of level s sees, keys laid out level by level.

    Level 1 (the target's features): keys i <= j - s + 1 (the context the draft starts from);
    level r in 2..s: key j - s + r only (the positions guessed on the way to level s)."""
    j = torch.arange(L, device=device)[:, None]
    i = torch.arange(L, device=device)[None, :]
    blocks = [i <= j - s + 1] + [i == j - s + r for r in range(2, s + 1)]
    return torch.cat(blocks, dim=1)


class EagleLayer(nn.Module):
    """A Llama decoder layer (pre-norm attention + SwiGLU MLP), fused q/k/v and gate/up."""

    def __init__(self, a: EagleArch):
        super().__init__()
        self.h, self.kvh, self.d = a.num_heads, a.num_kv_heads, a.head_dim
        self.input_norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.qkv = nn.Linear(a.hidden_size, (self.h + 2 * self.kvh) * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, a.hidden_size, bias=False)
        self.post_norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.gate_up = nn.Linear(a.hidden_size, 2 * a.intermediate_size, bias=False)
        self.down = nn.Linear(a.intermediate_size, a.hidden_size, bias=False)

    def qkv_rope(self, x, cos, sin):
        """x [..., H] -> q [..., h, d], k, v [..., kvh, d] with rotary applied (cos/sin broadcastable)."""
        q, k, v = self.qkv(self.input_norm(x)).split([self.h * self.d, self.kvh * self.d, self.kvh * self.d], -1)
        q = q.unflatten(-1, (self.h, self.d))
        k = k.unflatten(-1, (self.kvh, self.d))
        q, k = eager_rotary(q, k, cos, sin)
        return q, k, v.unflatten(-1, (self.kvh, self.d))

    def finish(self, x, attn):
        """x [..., H] + o_proj(attn [..., h * d]), then the MLP block."""
        x = x + self.o_proj(attn)
        return x + self.down(eager_silu_mul(self.gate_up(self.post_norm(x))))


def _attend(q, k, v, mask):
    """q [B, Q, h, d], k/v [B, S, kvh, d], mask [B or 1, Q, S] bool -> [B, Q, h * d]."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask[:, None], enable_gqa=q.shape[2] != k.shape[2])
    return o.transpose(1, 2).flatten(2)


class EagleHead(nn.Module):
    """fc([embed(x_{j+1}), f_j]) -> decoder layers -> norm = g_j (a guess of f_{j+1})."""

    def __init__(self, a: EagleArch, rotary):
        super().__init__()
        self.arch = a
        self.fc = nn.Linear(2 * a.hidden_size, a.hidden_size, bias=False)
        self.layers = nn.ModuleList(EagleLayer(a) for _ in range(a.num_layers))
        self.norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        # borrowed from the target, kept out of the module tree (never saved, moved or cast with the head):
        # the rotary tables, the embedding, the LM head (or a restricted copy of it, see attach)
        self._borrow(rotary=rotary, embed=None, lm_head=None, head_ids=None)

    def _borrow(self, **modules) -> None:
        for name, m in modules.items():
            object.__setattr__(self, name, m)

    def own_state(self) -> dict[str, torch.Tensor]:
        """The tensors the head stores: fc, its layers and norm."""
        return dict(self.state_dict())

    def attach(self, embed: nn.Module, lm_head: nn.Module, head_ids: torch.Tensor | None = None) -> "EagleHead":
        """Borrow the target's embedding and LM head (restricted to ``head_ids`` when given: a copy)."""
        self._borrow(embed=embed, lm_head=lm_head if head_ids is None else restrict_head(lm_head, head_ids),
                     head_ids=None if head_ids is None else head_ids.to(lm_head.weight.device))
        return self

    def init_from_target(self, target_layer_state: dict[str, torch.Tensor]) -> None:
        """Start as a pass-through of the feature: fc is the identity on the feature half (small on the
        embedding half), each layer a copy of the target's last decoder layer (same names as EagleLayer's,
        already fused) with its two output projections zeroed (the residual stream passes unchanged), and
        the final norm's weight 1: g_j = f_j / rms(f_j) at first. Measured on SmolLM2 (40 CPU steps): the
        KL at step 0 is 6.4 against 22.6 with the layer copied as is, and after 40 steps top-1 is 20 %
        against 11 % (random init: 15 %)."""
        H = self.arch.hidden_size
        with torch.no_grad():
            for layer in self.layers:
                layer.load_state_dict(target_layer_state)
                layer.o_proj.weight.zero_()
                layer.down.weight.zero_()
            self.norm.weight.fill_(1.0)
            w = torch.randn(H, 2 * H, device=self.fc.weight.device) * (0.02 / math.sqrt(2))
            w[:, H:] += torch.eye(H, device=w.device)
            self.fc.weight.copy_(w)

    def logits(self, g: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """g [N, H] -> float32 logits [N, V] over the whole vocabulary (-inf outside a restricted head)."""
        out = self.lm_head(g)
        if self.head_ids is not None:
            return full_vocab_logits(out, self.head_ids, vocab_size or self.arch.vocab_size)
        return out.float()

    # --- training: teacher-forced, ``steps`` levels deep ------------------------------------------
    def forward_train(self, feats: torch.Tensor, next_ids: torch.Tensor, steps: int = 1) -> list[torch.Tensor]:
        """feats [B, L, H] (f_0..f_{L-1}), next_ids [B, L] (x_1..x_L) -> ``steps`` outputs [B, L, H]:
        level s at position j guesses f_{j+1} after s - 1 guessed features (valid for j >= s - 1)."""
        B, L, _ = feats.shape
        pos = torch.arange(L, device=feats.device)
        cos, sin = self.rotary.lookup(pos, feats.dtype)                     # [L, 1, d]
        emb = self.embed(next_ids)
        keys: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.layers]
        outs: list[torch.Tensor] = []
        f = feats
        for s in range(1, steps + 1):
            if s > 1:                         # position j reads the guess of f_j made at j - 1
                f = torch.cat([feats[:, :1], outs[-1][:, :-1]], dim=1)
            x = self.fc(torch.cat([emb.to(f.dtype), f], dim=-1))
            mask = level_mask(L, s, feats.device)[None]                     # [1, L, s L]
            for layer, kv in zip(self.layers, keys):
                q, k, v = layer.qkv_rope(x, cos, sin)
                kv.append((k, v))
                o = _attend(q, torch.cat([a for a, _ in kv], 1), torch.cat([b for _, b in kv], 1), mask)
                x = layer.finish(x, o)
            outs.append(self.norm(x))
        return outs

    # --- inference: a padded batch over the dense KV cache ----------------------------------------
    def forward_cached(self, ids, feats, pos, wslot, qpos, rslot, kv_len: int, cache: "EagleCache"):
        """ids, pos, wslot [N = Bb * Q]; feats [N, H]; qpos [Bb, Q]; rslot [Bb] -> g [N, H].

        Token n (row n // Q) writes its K/V at (wslot[n], pos[n]) -- the cache's sentinel slot for
        padding -- and attends to positions <= qpos of slot rslot[row] (the first kv_len positions)."""
        Bb, Q = qpos.shape
        x = self.fc(torch.cat([self.embed(ids).to(feats.dtype), feats], dim=-1))
        cos, sin = self.rotary.lookup(pos, x.dtype)                         # [N, 1, d]
        mask = torch.arange(kv_len, device=pos.device)[None, None, :] <= qpos[:, :, None]   # [Bb, Q, kv_len]
        for layer, (kc, vc) in zip(self.layers, cache.layers):
            q, k, v = layer.qkv_rope(x, cos, sin)
            kc[wslot, pos] = k
            vc[wslot, pos] = v
            o = _attend(q.view(Bb, Q, layer.h, layer.d), kc[rslot, :kv_len], vc[rslot, :kv_len], mask)
            x = layer.finish(x, o.view(Bb * Q, -1))
        return self.norm(x)


class EagleCache:
    """Dense K/V of the head: per layer [slots + 1, max_len, kvh, d] (slot ``slots`` is the sentinel that
    padding writes to). A sequence holds one slot while it runs (draft/eagle.py assigns them)."""

    def __init__(self, a: EagleArch, slots: int, max_len: int, device, dtype):
        shape = (slots + 1, max_len, a.num_kv_heads, a.head_dim)
        self.layers = [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                       for _ in range(a.num_layers)]
        self.slots, self.max_len, self.sentinel = slots, max_len, slots

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.layers)


# --- the folder ---------------------------------------------------------------------------------
def is_eagle_folder(folder) -> bool:
    """A folder holding an EAGLE head (its config.json names the EagleHead architecture)."""
    path = None if folder is None else Path(folder) / CONFIG_FILE
    if path is None or not path.is_file():
        return False
    try:
        return ARCHITECTURE in (json.loads(path.read_text()).get("architectures") or [])
    except (ValueError, AttributeError):
        return False


def save_eagle(out: Path, head: EagleHead, base: str, shared: dict[str, torch.Tensor], save_dtype: torch.dtype,
               info: dict | None = None, head_ids: torch.Tensor | None = None) -> Path:
    """Write config.json (the EagleHead architecture and shapes), the head's own tensors, the manifest naming
    the target that lends the embedding and LM head (``shared``: HF name -> tensor, for the checksums: they
    also pin the vocabulary, so the folder holds no tokenizer) and optional head tokens."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", save_dtype).contiguous() for k, v in head.own_state().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_FILE)
    cfg = {"architectures": [ARCHITECTURE], "model_type": "specdec_eagle", "dtype": str(save_dtype).replace("torch.", ""),
           **asdict(head.arch)}
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    if head_ids is not None:
        save_head_tokens(out, head_ids)
    elif (out / HEAD_FILE).exists():
        (out / HEAD_FILE).unlink()
    write_manifest(out, base, shared, {"trained": info or {}})
    return out


def read_arch(folder: Path) -> EagleArch:
    d = json.loads((Path(folder) / CONFIG_FILE).read_text())
    names = EagleArch.__dataclass_fields__
    return EagleArch(**{k: v for k, v in d.items() if k in names})


def load_eagle(folder: Path, target_module, device, dtype: torch.dtype) -> EagleHead:
    """The head in ``folder`` on ``device``, borrowing ``target_module``'s embedding, LM head and rotary
    tables (a native :class:`~specdec.models.llama.LlamaForCausalLM`). The target's embedding must be
    the one the head was trained with (checksum in specdec_draft.json)."""
    from safetensors.torch import load_file
    folder = Path(folder)
    a = read_arch(folder)
    t = target_module.arch
    if (a.hidden_size, a.vocab_size) != (t.hidden_size, t.vocab_size):
        raise ValueError(f"EAGLE head {folder}: hidden size {a.hidden_size} / vocabulary {a.vocab_size} do not match "
                         f"the target's {t.hidden_size} / {t.vocab_size}")
    manifest = read_manifest(folder) or {}
    want = manifest.get("checksums", {}).get("model.embed_tokens.weight")
    if want is not None:
        got = checksum(target_module.embed.weight)
        if not all(math.isclose(g, e, rel_tol=1e-3, abs_tol=1e-2) for g, e in zip(got, want)):
            raise ValueError(f"EAGLE head {folder}: the target's embedding is not the one it was trained with "
                             f"(checksum {got} != {want}); it drafts for {manifest.get('base')!r}")
    head = EagleHead(a, target_module.rotary)
    state = load_file(str(folder / WEIGHTS_FILE))
    missing = set(head.own_state()) - set(state)
    if missing:
        raise ValueError(f"EAGLE head {folder}: weights missing for {sorted(missing)[:3]}")
    head.load_state_dict(state, strict=False)
    head.to(device=device, dtype=dtype)
    head.attach(target_module.embed, target_module.lm_head, load_head_tokens(folder, a.vocab_size))
    return head.eval().requires_grad_(False)
