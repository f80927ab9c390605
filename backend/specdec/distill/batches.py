"""Batches cut from the corpus: a train/validation split by prompt, and deterministic batches.

A row is one corpus sequence, right-padded with 0 to the longest in its batch (causal attention
never looks right, so padding needs no attention mask); the loss mask marks the positions whose
next token is a completion token.
"""
from __future__ import annotations

import torch

from .data import Corpus

VAL_EVERY = 20     # one prompt in 20 (with all its completions) is held out for validation


def split_by_prompt(corpus: Corpus, every: int = VAL_EVERY) -> tuple[list[int], list[int]]:
    """(train rows, validation rows): every ``every``-th distinct prompt goes to validation with
    all its completions, so validation measures generalisation to unseen prompts. No validation
    when the corpus has fewer than ``every`` prompts."""
    group: dict[tuple, int] = {}
    keys = [group.setdefault(tuple(s[:p]), len(group)) for s, p in zip(corpus.sequences, corpus.prompt_lens)]
    if len(group) < every:
        return list(range(len(corpus))), []
    val = [r for r, g in enumerate(keys) if g % every == every - 1]
    held = set(val)
    return [r for r in range(len(corpus)) if r not in held], val


def pad(corpus: Corpus, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids [B, L] (right-padded with 0) and loss_mask [B, L] (True where position t's
    prediction of token t + 1 is a completion token)."""
    seqs = [corpus.sequences[r] for r in rows]
    L = max(len(s) for s in seqs)
    ids = torch.zeros((len(rows), L), dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.bool)
    for b, (r, s) in enumerate(zip(rows, seqs)):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, corpus.prompt_lens[r] - 1: len(s) - 1] = True
    return ids, mask


def eval_batches(corpus: Corpus, rows: list[int], batch: int):
    """The validation rows in length order, ``batch`` at a time."""
    rows = sorted(rows, key=lambda r: len(corpus.sequences[r]))
    for i in range(0, len(rows), batch):
        yield pad(corpus, rows[i: i + batch])


class Batcher:
    """Step s -> the same batch whether or not the run was resumed (the order depends only on the seed).

    Each epoch is a seeded permutation of ``rows``; within groups of 32 batches the rows are sorted
    by length so a batch pads little, then the batches are shuffled.
    """

    GROUP = 32

    def __init__(self, corpus: Corpus, rows: list[int], batch: int, seed: int):
        if len(rows) < batch:
            raise ValueError(f"batch={batch} is larger than the training corpus ({len(rows)} sequences); "
                             f"lower --batch or raise --num-prompts/--samples/--invent")
        self.corpus, self.rows, self.batch, self.seed = corpus, rows, batch, seed
        self.per_epoch = len(rows) // batch
        self._epoch, self._plan = -1, []

    def _make_plan(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        perm = [self.rows[i] for i in torch.randperm(len(self.rows), generator=g)[: self.per_epoch * self.batch]]
        lengths = [len(s) for s in self.corpus.sequences]
        batches = []
        step = self.batch * self.GROUP
        for i in range(0, len(perm), step):
            rows = sorted(perm[i: i + step], key=lengths.__getitem__)
            batches += [rows[k: k + self.batch] for k in range(0, len(rows), self.batch)]
        return [batches[o] for o in torch.randperm(len(batches), generator=g).tolist()]

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of training step ``step``: see :func:`pad`."""
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._plan = epoch, self._make_plan(epoch)
        return pad(self.corpus, self._plan[i])
