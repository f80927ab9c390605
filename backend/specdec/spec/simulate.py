"""SIMULATED verification: benchmarks of random-weight shapes with a chosen acceptance and hit rate.

Random weights accept nothing, so they time the machinery but not the speedup speculation would give
a trained draft. With ``simulate_acceptance`` A (and ``simulate_hit`` H), the engine still runs the
target's verify forward every round (its time is real) but replaces the outcome:

* k: each of the row's draft tokens is accepted with probability A, up to the first rejection
  (P(k) = A^k (1 - A) for k < K, A^K for k = K: the i.i.d. model of the paper's Theorem 12);
* t*: with probability H one of the tokens the draft forked at depth k (a speculation-cache hit; the
  drafter names them: the tree being built, or the JIT's shadow fork when no tree is built), else a
  uniformly random token (a miss, up to a chance of F/V).

The committed text is NOT the target's: nothing that checks outputs may use it, and every table made
with it is labelled SIMULATED. The engine calls :meth:`SimulatedVerifier.outcome` only when the config
sets ``simulate_acceptance``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..transfer import upload


def simulated_accepts(rng: np.random.Generator, acceptance: float, num: list[int]) -> list[int]:
    """Accepted drafts per row: row b's num[b] drafts are accepted one by one with probability
    ``acceptance`` until the first rejection."""
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance={acceptance} must lie in [0, 1]")
    out = []
    for n in num:
        k = 0
        while k < n and rng.random() < acceptance:
            k += 1
        out.append(k)
    return out


class SimulatedVerifier:
    def __init__(self, acceptance: float, hit: float | None, vocab_size: int, seed: int = 0):
        if hit is not None and not 0.0 <= hit <= 1.0:
            raise ValueError(f"hit={hit} must lie in [0, 1]")
        self.acceptance, self.hit, self.vocab, self.seed = acceptance, hit, vocab_size, seed
        self.rng = np.random.default_rng(seed)
        self.rounds = self.hits_drawn = self.hits_placed = 0

    def reseed(self) -> None:
        """Draw from the start of the seeded stream again (a benchmark's passes then meet the same outcomes)."""
        self.rng = np.random.default_rng(self.seed)

    def outcome(self, num: list[int], seqs: list, drafter, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(accepted [B], recovery [B]) int64 on ``device`` for this round (SIMULATED). ``drafter`` may
        offer ``sim_candidates(seq, depth)``: a host list of tokens, or (roots on the device, first
        index, count, CUDA event or None) from the tree being built, or None."""
        rng = self.rng
        k = simulated_accepts(rng, self.acceptance, num)
        rec = rng.integers(0, self.vocab, size=len(num)).astype(np.int64)
        picks = []                                              # (row, roots tensor, index, event)
        cands = getattr(drafter, "sim_candidates", None)
        for b, s in enumerate(seqs):
            if num[b] == 0 or self.hit is None or cands is None or rng.random() >= self.hit:
                continue
            self.hits_drawn += 1
            c = cands(s, k[b])
            if c is None:
                continue                                        # nothing forked there: a miss after all
            self.hits_placed += 1
            if isinstance(c, list):
                rec[b] = c[int(rng.integers(len(c)))]
            else:
                roots, first, count, event = c
                picks.append((b, roots, first + int(rng.integers(count)), event))
        self.rounds += 1
        accepted = upload(k, device, torch.long)
        recovery = upload(rec, device, torch.long)
        for ev in {id(p[3]): p[3] for p in picks if p[3] is not None}.values():
            torch.cuda.current_stream(device).wait_event(ev)     # the fork ran on the draft's stream
        for roots in {id(p[1]): p[1] for p in picks}.values():
            group = [p for p in picks if p[1] is roots]
            rows = upload([p[0] for p in group], device, torch.long)
            idx = upload([p[2] for p in group], roots.device, torch.long)
            recovery[rows] = roots[idx].to(device)
        return accepted, recovery


def make_simulator(spec, vocab_size: int, seed: int) -> SimulatedVerifier | None:
    """The SIMULATED verifier a SpecConfig asks for (None: real verification)."""
    if spec.simulate_acceptance is None:
        return None
    return SimulatedVerifier(spec.simulate_acceptance, spec.simulate_hit, vocab_size, seed)
