"""Drafters for synchronous speculative decoding.

* :class:`ModelDrafter`: a draft model (a separate checkpoint, or ``self:N`` = the target's
  first N layers) that samples K tokens with the request's own temperature/top-k/top-p and
  returns the distributions q it sampled from.
* :class:`NgramDrafter`: prompt lookup; proposes the continuation of the most recent earlier
  occurrence of the sequence's last n tokens (n from ``ngram_max`` down to ``ngram_min``).
  Deterministic, so q is one-hot at each proposed token.

Both return a :class:`Proposal` and learn the verification outcome through ``commit``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engine.runner import Feed
from ..engine.sequence import Sequence
from ..layers.sampling import probs_from_logits, sample_from_probs


@dataclass(slots=True)
class Proposal:
    tokens: torch.Tensor              # [B, K] int64 (0 past num[b])
    probs: torch.Tensor | None        # [B, K, V] q, or None when q is one-hot at tokens
    num: list[int]                    # drafts proposed per row


class SamplingRows:
    """Per-row sampling parameters as tensors, and uniform draws from each row's random stream.

    The parameter tensors are built on first use: an all-greedy batch never needs them."""

    def __init__(self, seqs: list[Sequence], device, engine_gen: torch.Generator):
        self.seqs, self.device, self.engine_gen = seqs, device, engine_gen
        self.all_greedy = all(s.params.greedy for s in seqs)
        self._t = None

    def _tensors(self):
        if self._t is None:
            ps = [s.params for s in self.seqs]
            host = torch.tensor([[p.temperature, p.top_k, p.top_p] for p in ps], dtype=torch.float64)
            host = host.to(self.device, non_blocking=True)
            self._t = (host[:, 0].float(), host[:, 1].long(), host[:, 2].float())
        return self._t

    @property
    def temperature(self):
        return self._tensors()[0]

    @property
    def top_k(self):
        return self._tensors()[1]

    @property
    def top_p(self):
        return self._tensors()[2]

    def select(self, rows: list[int]) -> "SamplingRows":
        return SamplingRows([self.seqs[r] for r in rows], self.device, self.engine_gen)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] or [B, n, V] (row b uses sequence b's parameters)."""
        if logits.dim() == 3:
            B, n, V = logits.shape
            rep = lambda t: t.repeat_interleave(n)
            return probs_from_logits(logits.reshape(B * n, V), rep(self.temperature), rep(self.top_k),
                                     rep(self.top_p)).view(B, n, V)
        return probs_from_logits(logits, self.temperature, self.top_k, self.top_p)

    def uniforms_per_row(self, counts: list[int], width: int) -> torch.Tensor:
        """[B, width] uniforms; row b draws counts[b] values (zeros after), so a seeded request's
        stream advances by its own draft count, whatever else shares the batch."""
        out = torch.zeros((len(self.seqs), width))
        for b, s in enumerate(self.seqs):
            if counts[b]:
                out[b, : counts[b]] = torch.rand(counts[b], generator=s.generator or self.engine_gen)
        return out.to(self.device, non_blocking=True)

    def uniforms(self, n: int) -> torch.Tensor:
        """[B, n] uniforms: seeded requests draw from their own generator, the rest share the engine's."""
        B = len(self.seqs)
        if self.all_greedy:
            return torch.zeros((B, n), device=self.device)   # greedy rows never use them
        out = torch.rand((B, n), generator=self.engine_gen)
        for b, s in enumerate(self.seqs):
            if s.generator is not None:
                out[b] = torch.rand(n, generator=s.generator)
        return out.to(self.device, non_blocking=True)


class ModelDrafter:
    """Drafts with a model. q covers the target's vocabulary: extra draft rows are cut, missing ones
    get probability 0 (Qwen checkpoints pad their embeddings to different sizes)."""

    def __init__(self, runner, kv_append: bool = True, target_vocab: int | None = None, target_device=None):
        self.runner = runner
        self.kv_append = kv_append
        self.vocab_size = target_vocab or runner.vocab_size
        self.target_device = target_device

    def _logits(self, feeds: list[Feed], device_tokens=None) -> torch.Tensor:
        logits = self.runner.forward(feeds, device_tokens)
        if self.target_device is not None and logits.device != self.target_device:
            logits = logits.to(self.target_device)
        V = logits.shape[-1]
        if V > self.vocab_size:
            logits = logits[:, : self.vocab_size]
        elif V < self.vocab_size:
            logits = torch.nn.functional.pad(logits, (0, self.vocab_size - V), value=float("-inf"))
        return logits

    def propose(self, seqs: list[Sequence], ks: list[int], sampling: SamplingRows) -> Proposal:
        """K steps with no host sync: step i > 0 reads step i-1's tokens on the device. Every row runs
        every step (rows already done are placeholder rows) so that shapes stay fixed for CUDA graphs."""
        B, K = len(seqs), max(ks)
        dev = sampling.device
        tokens = torch.zeros((B, K), dtype=torch.long, device=dev)
        # greedy drafts are one-hot, which verify() assumes when probs is None
        probs = None if sampling.all_greedy else torch.zeros((B, K, self.vocab_size), dtype=torch.float32, device=dev)
        u = None if sampling.all_greedy else sampling.uniforms_per_row(ks, K)             # [B, K]
        prev = None
        for i in range(K):
            if i == 0:   # catch up on everything the draft has not seen, ending with the last token
                feeds = [Feed(s.seq_id, s.token_ids[s.draft_cached:], s.draft_cached) if ks[b] else
                         Feed(s.seq_id, [0], 0, dummy=True) for b, s in enumerate(seqs)]
                logits = self._logits(feeds)                                           # [B, V]
            else:
                feeds = [Feed(s.seq_id, [0], len(s) - 1 + i, dummy=ks[b] <= i) for b, s in enumerate(seqs)]
                logits = self._logits(feeds, (prev[:, None], 0))
            if probs is None:
                tok = logits.argmax(-1)
            else:
                q = sampling.probs(logits)
                tok = sample_from_probs(q, u[:, i])
                probs[:, i] = q
            tokens[:, i] = tok
            prev = tok.to(self.runner.device, non_blocking=True)
        for b in range(B):
            if ks[b] > 0:
                seqs[b].draft_cached = len(seqs[b]) - 1 + ks[b]
        return Proposal(tokens, probs, list(ks))

    def commit(self, seq: Sequence, old_len: int, accepted: int, num_draft: int) -> None:
        """Keep the draft K/V that matches committed tokens; with kv_append=False, drop the drafts' K/V."""
        if num_draft == 0:
            return
        keep = old_len + accepted if self.kv_append else old_len
        seq.draft_cached = min(seq.draft_cached, keep)
        self.runner.truncate(seq.seq_id, seq.draft_cached)

    def free(self, seq: Sequence) -> None:
        self.runner.free(seq.seq_id)
        seq.draft_cached = 0

    def needs(self, seq: Sequence, k: int) -> int:
        """Draft KV tokens this sequence needs for a round with k drafts."""
        return len(seq) - 1 + k if k else 0


class NgramDrafter:
    def __init__(self, n_max: int = 4, n_min: int = 1):
        self.n_max, self.n_min = n_max, n_min

    def lookup(self, tokens: list[int], k: int) -> list[int]:
        arr = np.asarray(tokens, dtype=np.int64)
        L = len(arr)
        for n in range(min(self.n_max, L - 1), self.n_min - 1, -1):
            pattern = arr[L - n:]
            windows = np.lib.stride_tricks.sliding_window_view(arr[: L - 1], n)   # starts 0..L-1-n
            hits = np.flatnonzero((windows == pattern).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n
                return arr[start: start + k].tolist()
        return []

    def propose(self, seqs: list[Sequence], ks: list[int], sampling: SamplingRows) -> Proposal:
        B, K = len(seqs), max(ks)
        tokens = torch.zeros((B, K), dtype=torch.long)
        num = []
        for b, s in enumerate(seqs):
            cont = self.lookup(s.token_ids, ks[b]) if ks[b] else []
            tokens[b, : len(cont)] = torch.tensor(cont, dtype=torch.long)
            num.append(len(cont))
        return Proposal(tokens.to(sampling.device), None, num)

    def commit(self, seq, old_len, accepted, num_draft) -> None:
        pass

    def free(self, seq) -> None:
        pass

    def needs(self, seq, k) -> int:
        return 0
