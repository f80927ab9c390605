"""A draft model in the engine's process: a separate checkpoint, or ``self:N`` (the target's first N
layers). It samples K tokens per row with the request's own temperature/top-k/top-p and returns the
distributions q it sampled from; its KV cache is its runner's, rolled back by length in ``commit``.
"""
from __future__ import annotations

import torch

from ..layers.sampling import SamplingRows
from ..runner.feed import Feed
from .base import Drafter, Proposal
from .loop import LoopSampler, draft_loop, moved_loop, moves_on


class ModelDrafter(Drafter):
    """q covers the target's vocabulary (``target_vocab``): extra draft rows are cut, missing ones get
    probability 0. ``target_device``: where proposals go (the draft may run on another device)."""

    def __init__(self, runner, kv_append: bool = True, target_vocab: int | None = None, target_device=None):
        self.runner = runner
        self.kv_append = kv_append
        self.vocab_size = target_vocab or runner.vocab_size
        self.target_device = torch.device(target_device) if target_device is not None else runner.device

    def prefill(self, seqs) -> None:
        """The draft's forward over what the target prefills now (a new prompt, or a resumed sequence's committed
        tokens but the last), so the first round's catch-up is the newest token alone: a long prompt is not caught
        up inside the first draft loop (an eager forward counted as drafting; 2048-token prompts at batch 16 made
        it ~20 ms of every round of a short run). When the draft's pool cannot hold them now, the rows catch up
        in :meth:`propose` as before."""
        rows = [(s, ids) for s in seqs if (ids := s.prefill_ids)]
        if not rows or not self.runner.can_hold({s.seq_id: len(t) for s, t in rows}):
            return
        self.runner.forward([Feed(s.seq_id, t, 0, num_logits=0) for s, t in rows])
        for s, t in rows:
            s.draft_cached = len(t)

    def propose(self, seqs, ks: list[int], sampling: SamplingRows) -> Proposal:
        """K steps fed on the device with no host sync (draft/loop.py; one graph replay on CUDA).
        q is None when every row is greedy (verify() then takes q one-hot at the tokens)."""
        sampler = self._sampler(sampling, ks)
        catch_up = [Feed(s.seq_id, s.tokens_from(s.draft_cached), s.draft_cached) if ks[b] else
                    Feed(s.seq_id, [0], 0, dummy=True) for b, s in enumerate(seqs)]
        tokens, probs, _ = draft_loop(self.runner, catch_up, [len(s) for s in seqs], ks, sampler, self.vocab_size)
        for b, s in enumerate(seqs):
            if ks[b] > 0:
                s.draft_cached = len(s) - 1 + ks[b]
        if tokens.device != self.target_device:
            tokens = tokens.to(self.target_device, non_blocking=True)
            probs = None if probs is None else probs.to(self.target_device, non_blocking=True)
        return Proposal(tokens, probs, list(ks))

    def _sampler(self, sampling: SamplingRows | None, ks: list[int]) -> LoopSampler:
        """The loop's sampler for these rows: argmax when all are greedy, else each row's parameters and its own
        uniforms (drawn now: a seeded request's stream advances by its draft count)."""
        if sampling is None or sampling.all_greedy:
            return LoopSampler(greedy=True)
        dev = self.runner.device
        return LoopSampler(False, sampling.temperature.to(dev), sampling.top_k.to(dev), sampling.top_p.to(dev),
                           sampling.uniforms_per_row(ks, max(ks)).to(dev), sampling.filtered, sampling.any_greedy)

    def propose_moved(self, seqs, ks: list[int], tokens0: torch.Tensor, shift: torch.Tensor, most: int,
                      sampling: SamplingRows | None = None) -> Proposal:
        """Drafts (and q, for sampled rows) for a round launched before the round in flight has reached the host
        (engine/spec_overlap.py; draft/loop.py ``moved_loop``). ``draft_cached`` is set when each round is
        committed (:meth:`commit`)."""
        tokens, probs = moved_loop(self.runner, seqs, ks, tokens0, shift, most, self.vocab_size,
                                   self._sampler(sampling, ks))
        return Proposal(tokens, probs, list(ks))

    def moves(self, seqs=()) -> bool:
        """Whether :meth:`propose_moved` can run (for any rows, greedy or sampled): the loop is a static-buffer
        program here, on the target's device, and the drafts' K/V is kept."""
        return self.kv_append and moves_on(self.runner, self.target_device, self.vocab_size)

    def commit(self, seq, old_len: int, accepted: int, num_draft: int, in_flight: bool = False) -> None:
        """Keep the draft K/V that matches committed tokens; with kv_append=False, drop the drafts' K/V.
        in_flight: a later round is already running on this row (engine/spec_overlap.py): its loop wrote the
        K/V past the draft tokens this round tried, so nothing is truncated (the blocks stay the row's)."""
        if num_draft == 0:
            return
        # the loop wrote d_1..d_{K-1} at old_len .. old_len + K - 2: those up to the first rejected one are committed
        seq.draft_cached = old_len + min(accepted, num_draft - 1) if self.kv_append else old_len
        if not in_flight:
            self.runner.truncate(seq.seq_id, seq.draft_cached)

    def free(self, seq) -> None:
        self.runner.free(seq.seq_id)
        seq.draft_cached = 0

    def needs(self, seq, k: int) -> int:
        return len(seq) - 1 + k if k else 0
