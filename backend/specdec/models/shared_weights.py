"""Drafts that borrow weights from their target.

A distilled draft shares the target's embeddings and LM head, so its folder stores only what it
adds (its layers and final norm) plus a manifest, ``specdec_draft.json``::

    {"base": "smollm2-135m",                      # alias or folder of the model lending the weights
     "shared": ["model.embed_tokens.weight"],     # HF names of the borrowed tensors
     "checksums": {"model.embed_tokens.weight": [sum, abs_sum]}}

``load_shared`` returns those tensors from the base (checked against the checksums, so a draft
never silently runs on another model's embeddings). ``lm_head.weight`` falls back to
``model.embed_tokens.weight`` when the base ties its embeddings.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

MANIFEST = "specdec_draft.json"
_TIED = {"lm_head.weight": "model.embed_tokens.weight"}


def checksum(t: torch.Tensor) -> list[float]:
    """(sum, sum of |x|) of the tensor rounded to bfloat16 first: the same base gives the same
    checksum whether it was held in float32 (loading) or bfloat16 (training, export)."""
    t = t.detach().to(torch.bfloat16).to(torch.float64)
    return [float(t.sum()), float(t.abs().sum())]


def write_manifest(folder: Path, base: str, shared: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    data = {"base": base, "shared": sorted(shared), "checksums": {k: checksum(v) for k, v in shared.items()}}
    data.update(extra or {})
    (folder / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data.get("base"), str) or not isinstance(data.get("shared"), list):
        raise ValueError(f"{path}: expected a 'base' (alias or folder) and a 'shared' list of tensor names")
    return data


def load_shared(folder: Path) -> dict[str, torch.Tensor]:
    """HF-named tensors that the model in ``folder`` borrows from its base ({} when it borrows none)."""
    from safetensors import safe_open

    from .registry import resolve

    manifest = read_manifest(folder)
    if manifest is None:
        return {}
    base = resolve(manifest["base"])
    want = {name: _TIED.get(name, name) for name in manifest["shared"]}
    found: dict[str, torch.Tensor] = {}
    for f in sorted(base.glob("*.safetensors")):
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            keys = set(sf.keys())
            for name in want:
                key = name if name in keys else want[name]
                if name not in found and key in keys:
                    found[name] = sf.get_tensor(key)
    missing = [n for n in want if n not in found]
    if missing:
        raise ValueError(f"draft {folder}: its base {manifest['base']!r} ({base}) has no tensor {missing[0]!r}")
    for name, expected in manifest.get("checksums", {}).items():
        got = checksum(found[name])
        if not all(math.isclose(g, e, rel_tol=1e-4, abs_tol=1e-3) for g, e in zip(got, expected)):
            raise ValueError(f"draft {folder}: {name} of its base {manifest['base']!r} ({base}) is not the one it was "
                             f"trained with (checksum {got} != {expected}); was the base re-converted or replaced?")
    return found
