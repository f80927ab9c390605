"""Self-distillation of a small draft from its target (``specdec distill``).

Pipeline, one file per stage:

* ``prompts.py``  built-in TRAIN prompts (and the disjoint HELDOUT set ``specdec acceptance`` uses)
* ``data.py``     the corpus: the target's own completions (greedy + sampled at temperature 1) of
                  built-in and self-written prompts, generated with specdec's engine
* ``batches.py``  train/validation split by prompt; deterministic (resumable) batches
* ``model.py``    teacher (the target, frozen) and draft (its first N layers + final norm, sharing
                  the target's embeddings and LM head) as HF modules
* ``train.py``    the loop: loss = KL(target || draft) over the full vocabulary, teacher-forced
* ``checkpoint.py`` training state under OUT/train/ (resumable); ``export.py`` the draft folder
"""
from .config import DistillConfig
from .train import train

__all__ = ["DistillConfig", "train"]
