"""Write the draft as an HF folder that ``LLM(draft=DIR)`` loads.

config.json + model.safetensors + tokenizer files. A draft that shares the target's embeddings
stores only its layers and final norm, and ``specdec_draft.json`` names the target that lends
the rest (see :mod:`specdec.models.shared_weights`); ``standalone=True`` writes every tensor.
"""
from __future__ import annotations

import copy
from pathlib import Path

from ..models.draft_head import HEAD_FILE, save_head_tokens
from ..models.loader import DTYPES
from ..models.registry import ALIASES
from ..models.shared_weights import MANIFEST, write_manifest
from .model import shared_tensors


def base_name(base: str) -> str:
    """How the manifest names the target: an alias as is, a folder or file as an absolute path."""
    return base if base in ALIASES else str(Path(base).expanduser().resolve())


def export_draft(draft, teacher, tokenizer, base: str, out: Path, save_dtype: str = "bfloat16",
                 standalone: bool = False, info: dict | None = None, head_ids=None) -> Path:
    """Write the draft into ``out``; ``base`` (alias or folder) names the target that lends the
    shared tensors in the manifest (unused when ``standalone``); ``head_ids``: the tokens its LM
    head keeps (None = all; see :mod:`specdec.models.draft_head`)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[save_dtype]
    shared = {} if standalone else shared_tensors(draft, teacher)
    tensors = {}
    for name, t in draft.state_dict().items():
        if name in shared or (name == "lm_head.weight" and draft.config.tie_word_embeddings):
            continue
        tensors[name] = t.detach().to("cpu", dtype).contiguous()
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    config = copy.deepcopy(draft.config)
    config.dtype, config.use_cache = dtype, True
    config.architectures = [type(draft).__name__]
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if head_ids is not None:
        save_head_tokens(out, head_ids)
    elif (out / HEAD_FILE).exists():
        (out / HEAD_FILE).unlink()
    if shared:
        write_manifest(out, base_name(base), shared, {"trained": info or {}})
    elif (out / MANIFEST).exists():
        (out / MANIFEST).unlink()
    return out


def exported_bytes(out: Path) -> int:
    return (out / "model.safetensors").stat().st_size

