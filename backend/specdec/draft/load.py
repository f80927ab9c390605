"""Loading a draft model and checking it against its target: one place for each decision.

* ``self:N`` (the target's first N layers, final norm and LM head, weights shared) needs a native
  Llama-family target; any other draft is a folder, an alias or a .gguf file.
* Draft and target must share one vocabulary: the same tokenizer when the draft folder has one,
  and a draft vocabulary at least as large as the target tokenizer's (extra rows are cut).
* SSD (mode "async") needs a native draft: the worker's tree decode uses the paged runner.
"""
from __future__ import annotations

import dataclasses

import torch

from ..config import self_draft_layers
from ..models.llama import NATIVE_ARCHITECTURES, architecture_of
from ..models.loader import LoadedModel, has_tokenizer, load_hf_config, load_model, load_tokenizer
from ..models.registry import resolve


def load_draft(draft: str, device: torch.device, dtype: str, *, target: str | None = None,
               target_model: LoadedModel | None = None, impl: str = "auto",
               max_positions: int | None = None) -> LoadedModel:
    """The draft model on ``device``. ``self:N`` takes its layers from ``target_model`` when given
    (weights shared with it), else loads ``target`` first."""
    n = self_draft_layers(draft)
    if n is None:
        return load_model(draft, device, dtype, impl, max_positions)
    base = target_model
    if base is None:
        if target is None:
            raise ValueError(f"draft={draft!r} needs the target model (target=...)")
        base = load_model(target, device, dtype, impl, max_positions)
    if base.kind != "native":
        raise ValueError(f"draft {draft!r} needs a native Llama-family target ({', '.join(NATIVE_ARCHITECTURES)})")
    return dataclasses.replace(base, module=base.module.first_layers(n))


def check_vocab(target_tokenizer, *, draft_folder=None, draft_vocab_size: int | None = None, what: str = "draft") -> None:
    """Raise ValueError unless the draft can propose tokens of the target's vocabulary."""
    if draft_folder is not None and has_tokenizer(draft_folder):
        dtok = load_tokenizer(draft_folder)
        if dtok.get_vocab() != target_tokenizer.get_vocab():
            raise ValueError(f"{what} {draft_folder}: its tokenizer differs from the target's ({len(dtok)} vs "
                             f"{len(target_tokenizer)} tokens); draft and target must share one vocabulary")
    if draft_vocab_size is not None and draft_vocab_size < len(target_tokenizer):
        raise ValueError(f"{what} vocab_size {draft_vocab_size} < the target tokenizer's {len(target_tokenizer)} "
                         "tokens: draft and target must share one vocabulary")


def draft_folder(draft: str):
    """The folder of a model draft (None for self:N, ngram and remote drafts)."""
    if draft == "ngram" or draft.startswith(("self:", "remote:")):
        return None
    return resolve(draft)


def check_async_draft(draft: str, target: str, impl: str = "auto") -> None:
    """SSD builds its speculation tree with the paged runner: refuse a generic (GPT-2 style) draft at
    construction, naming the families that work, instead of failing in the worker's handshake."""
    if draft.startswith("remote:"):
        return
    from ..models.eagle import is_eagle_folder
    if self_draft_layers(draft) is None and is_eagle_folder(draft_folder(draft)):
        raise ValueError(f"draft {draft!r} is an EAGLE head: it reads the target's hidden states in the target's "
                         "process, so it serves mode='sync' only (not SSD's draft worker)")
    name = target if self_draft_layers(draft) is not None else draft
    arch = architecture_of(load_hf_config(resolve(name)))
    if impl == "hf" or arch not in NATIVE_ARCHITECTURES:
        raise ValueError(f"mode='async' needs a draft of a native Llama-family architecture "
                         f"({', '.join(NATIVE_ARCHITECTURES)}); {name} is {arch!r}"
                         f"{' (impl=hf)' if impl == 'hf' else ''}. Use mode='sync' for this draft, which works "
                         "with any Hugging Face causal LM.")
