"""Teacher and draft as HF modules.

The draft is the target's own architecture cut to ``layers`` decoder layers, initialised from the
target's first layers and final norm. By default it shares the target's embedding and LM head
*modules* (frozen), so the only trainable parameters are its layers and norm, which are also
all that the exported folder stores.
"""
from __future__ import annotations

import copy
import torch

from ..models.loader import DTYPES
from ..models.registry import resolve

SHARED_MODULES = {"model.embed_tokens": "model.embed_tokens.weight", "lm_head": "lm_head.weight"}


def load_teacher(target: str, device: torch.device, dtype: str):
    """The target as a frozen ``AutoModelForCausalLM`` in ``dtype``, and its folder."""
    from transformers import AutoModelForCausalLM
    folder = resolve(target)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype]).to(device).eval()
    model.requires_grad_(False)
    return model, folder


def draft_config(teacher_config, layers: int):
    cfg = copy.deepcopy(teacher_config)
    if layers >= cfg.num_hidden_layers:
        raise ValueError(f"layers={layers} is out of range: allowed [1, {cfg.num_hidden_layers - 1}] "
                         f"(the target has {cfg.num_hidden_layers})")
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None) is not None:       # per-layer attention kinds (Qwen, newer Llama configs)
        cfg.layer_types = list(cfg.layer_types[:layers])
    cfg.use_cache = False
    return cfg


def init_draft(teacher, layers: int, train_embeddings: bool = False, init_from: str | None = None):
    """A ``layers``-layer draft: float32 copies of the target's first layers and final norm (or of the layers
    and norm of the exported draft ``init_from``); embeddings and LM head shared with (and frozen like) the
    teacher unless ``train_embeddings``."""
    from transformers import AutoModelForCausalLM
    cfg = draft_config(teacher.config, layers)
    device = next(teacher.parameters()).device
    draft = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    own = draft.state_dict()
    src = {k: v.detach().float() for k, v in teacher.state_dict().items() if k in own}
    if init_from is not None:
        src.update(exported_layers(init_from, own))
    missing = [k for k in own if k not in src]
    if missing:
        raise ValueError(f"draft init: the target has no weights for {missing[:3]}")
    draft.load_state_dict(src)
    draft.tie_weights()
    draft.to(device)
    if not train_embeddings:
        draft.model.embed_tokens = teacher.model.embed_tokens
        draft.lm_head = teacher.lm_head
    return draft.train()


def exported_layers(draft: str, own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder layers and final norm of an exported draft (``specdec distill``'s folder), as float32, checked
    against the new draft's own names and shapes: they must cover every layer tensor and the norm."""
    from safetensors.torch import load_file
    folder = resolve(draft)
    saved = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    wanted = [k for k in own if k.startswith("model.layers.") or k == "model.norm.weight"]
    missing = [k for k in wanted if k not in saved]
    wrong = [k for k in wanted if k in saved and saved[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"init_from={draft!r}: its weights do not fit a draft of this shape (missing {missing[:3]}, "
                         f"other shapes {wrong[:3]}); it must be a draft of the same target with as many layers")
    return {k: saved[k] for k in wanted}


def shared_tensors(draft, teacher) -> dict[str, torch.Tensor]:
    """HF name -> tensor for the weights the draft borrows from the teacher (none when it owns them)."""
    out = {}
    for module_name, key in SHARED_MODULES.items():
        if draft.get_submodule(module_name) is teacher.get_submodule(module_name):
            if key == "lm_head.weight" and draft.config.tie_word_embeddings:
                continue                      # tied: the LM head is the embedding matrix
            out[key] = draft.get_submodule(module_name).weight
    return out


def trainable(draft) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in draft.named_parameters() if p.requires_grad]


def num_params(module, only_trainable: bool = False) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or (only_trainable and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total

