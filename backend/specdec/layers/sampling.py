"""Turning logits into the distributions that are sampled and verified.

``probs_from_logits`` applies temperature, top-k and top-p per row; the same function makes the
target's p and the draft's q, so verification compares exactly the distributions that were
sampled from. Greedy rows (temperature 0) get a one-hot at the argmax.

Sampling is inverse-CDF with uniforms drawn by the caller (one stream per seeded request), so a
seeded request gives the same output whatever else shares its batch.
"""
from __future__ import annotations

import torch

from ..transfer import upload


def probs_from_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                      top_p: torch.Tensor, filtered: bool | None = None, any_greedy: bool | None = None) -> torch.Tensor:
    """logits [N, V] float32; temperature/top_k/top_p [N] -> probs [N, V] float32 (rows sum to 1).

    top_k 0 = no top-k; top_p 1 = no nucleus filter; temperature 0 = one-hot at the argmax.
    ``filtered`` (some row has top-k or top-p) and ``any_greedy`` (some row has temperature 0) let a
    caller that knows the parameters on the host skip work without a device sync; when None they
    are read from the tensors, which syncs with the device.
    """
    greedy = temperature == 0
    t = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = logits / t[:, None]
    vocab = logits.shape[-1]
    if filtered is None:
        filtered = bool((top_k > 0).any()) or bool((top_p < 1).any())   # host sync: skip the sort when unused
    if filtered:
        scaled = _filter_top_k_top_p(scaled, top_k, top_p, vocab)
    probs = torch.softmax(scaled, dim=-1)
    if any_greedy is None:
        any_greedy = bool(greedy.any())                                  # host sync
    if any_greedy:
        onehot = torch.zeros_like(probs).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        probs = torch.where(greedy[:, None], onehot, probs)
    return probs


def _filter_top_k_top_p(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, vocab: int) -> torch.Tensor:
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    drop = ranks >= k[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    # keep the smallest prefix whose mass reaches top_p (the token that crosses it is kept)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop = drop | (before >= top_p[:, None])
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(scaled).scatter_(-1, order, sorted_logits)


def sample_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """probs [N, V] (rows need not be normalised); uniforms [N] in [0, 1) -> token ids [N] int64."""
    cdf = torch.cumsum(probs, dim=-1)
    target = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


class SamplingRows:
    """Per-row sampling parameters as tensors, and uniform draws from each row's random stream.

    The parameter tensors are built on first use: an all-greedy batch never needs them."""

    def __init__(self, seqs: list, device, engine_gen: torch.Generator):
        self.seqs, self.device, self.engine_gen = seqs, device, engine_gen
        ps = [s.params for s in seqs]
        self.all_greedy = all(p.greedy for p in ps)
        self.any_greedy = any(p.greedy for p in ps)
        self.filtered = any(p.top_k > 0 or p.top_p < 1 for p in ps)
        self._t = None

    def _tensors(self):
        if self._t is None:
            ps = [s.params for s in self.seqs]
            host = torch.tensor([[p.temperature, p.top_k, p.top_p] for p in ps], dtype=torch.float64)
            host = upload(host, self.device)
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
                                     rep(self.top_p), self.filtered, self.any_greedy).view(B, n, V)
        return probs_from_logits(logits, self.temperature, self.top_k, self.top_p, self.filtered, self.any_greedy)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> one token per row [B] on the device: the argmax for an all-greedy batch, else a
        draw from each row's distribution with one uniform from its stream (greedy rows: their argmax)."""
        if self.all_greedy:
            return logits.argmax(-1)
        return sample_from_probs(self.probs(logits), self.uniforms(1)[:, 0])

    def uniforms_per_row(self, counts: list[int], width: int) -> torch.Tensor:
        """[B, width] uniforms; row b draws counts[b] values (zeros after), so a seeded request's
        stream advances by its own draft count, whatever else shares the batch."""
        out = torch.zeros((len(self.seqs), width))
        for b, s in enumerate(self.seqs):
            if counts[b]:
                out[b, : counts[b]] = torch.rand(counts[b], generator=s.generator or self.engine_gen)
        return upload(out, self.device)

    def uniforms(self, n: int) -> torch.Tensor:
        """[B, n] uniforms: seeded requests draw from their own generator, the rest share the engine's."""
        B = len(self.seqs)
        if self.all_greedy:
            return torch.zeros((B, n), device=self.device)   # greedy rows never use them
        out = torch.rand((B, n), generator=self.engine_gen)
        for b, s in enumerate(self.seqs):
            if s.generator is not None:
                out[b] = torch.rand(n, generator=s.generator)
        return upload(out, self.device)


def fit_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Draft logits [N, V_draft] -> [N, vocab_size] over the target's vocabulary: extra rows cut,
    missing ones -inf (probability 0). Checkpoints pad their embeddings to different sizes (Qwen)."""
    V = logits.shape[-1]
    if V > vocab_size:
        return logits[:, :vocab_size]
    if V < vocab_size:
        return torch.nn.functional.pad(logits, (0, vocab_size - V), value=float("-inf"))
    return logits
