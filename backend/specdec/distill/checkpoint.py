"""Training state under ``OUT/train/``: the corpus, the config and the latest checkpoint.

The folder holds a ``.gitignore`` of ``*`` so committing a trained draft folder never drags
the training state along. Writes go to a temporary file first, so a run killed mid-save
leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import RESUMABLE_OVERRIDES, RUN_CONTROL, DistillConfig


def state_dir(out: Path) -> Path:
    d = out / "train"
    d.mkdir(parents=True, exist_ok=True)
    (d / ".gitignore").write_text("*\n")
    return d


def resolve_config(given: dict, resume: bool) -> DistillConfig:
    """The run's config: ``given`` alone for a new run; for ``resume``, the saved config with the
    fields in RESUMABLE_OVERRIDES replaced by ``given`` (others must agree with the saved run) and
    the RUN_CONTROL fields taken from ``given`` only."""
    out = Path(given["out"])
    saved_path = out / "train" / "config.json"
    if not resume:
        if (out / "train" / "checkpoint.pt").exists():
            raise ValueError(f"{out} already holds a training run: pass --resume to continue it, or another --out")
        return DistillConfig(**given)
    if not saved_path.exists():
        raise FileNotFoundError(f"--resume: no training run in {out} (expected {saved_path})")
    saved = json.loads(saved_path.read_text())
    for key, value in given.items():
        if key in saved and key not in RESUMABLE_OVERRIDES + RUN_CONTROL + ("out",) and saved[key] != value:
            raise ValueError(f"--resume: {key}={value!r} differs from the saved run's {saved[key]!r}; "
                             f"only {', '.join(RESUMABLE_OVERRIDES)} may change")
    saved.update({k: v for k, v in given.items() if k in RESUMABLE_OVERRIDES})
    for k in RUN_CONTROL:                       # this invocation's, else the config's default
        saved.pop(k, None)
        if k in given:
            saved[k] = given[k]
    saved["out"] = str(out)
    return DistillConfig.from_dict(saved)


def save_config(cfg: DistillConfig, sdir: Path) -> None:
    (sdir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def save_checkpoint(sdir: Path, step: int, draft, optimizer, scheduler) -> None:
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "draft": {n: p.detach().cpu() for n, p in draft.named_parameters() if p.requires_grad}}
    tmp = sdir / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(sdir / "checkpoint.pt")


def load_checkpoint(sdir: Path, draft, optimizer, scheduler) -> int:
    """Restore the draft's trainable weights and the optimizer/scheduler; returns the step to resume at."""
    path = sdir / "checkpoint.pt"
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(draft.named_parameters())
    with torch.no_grad():
        for name, value in state["draft"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])
