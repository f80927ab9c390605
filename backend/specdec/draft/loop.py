"""The K-step draft loop: the one way a draft model drafts tokens one decode step at a time.

Used by the local draft model (sync mode, :class:`~.model.ModelDrafter`) and by the draft worker's
JIT backup (:class:`~.core.DraftCore`). Step 0 runs each row's catch-up feed (every committed token
the draft has no K/V for, ending with the newest one); step i > 0 feeds the token sampled at step
i - 1 at storage position ``ends[b] - 1 + i``. Tokens never visit the host between steps.

When the draft's runner has CUDA graphs (runner/cuda_graphs.py) and the catch-up is short, the
whole loop — K forwards and their sampling — is ONE graph replay fed by one host-to-device copy
(:meth:`GraphRunner.loop`); otherwise it runs step by step. Every row runs every step (rows
already done are placeholder rows that write nowhere), so shapes stay fixed.

A catch-up longer than ``LOOP_CATCH_UP`` tokens (the tokens plain steps committed while the draft was idle:
k_policy auto decoding without drafts, a row that asked for none) is written to the draft's KV by one
forward first, and the loop starts from its last token. Otherwise each length would be a loop graph of its
own (captured in the middle of serving), or too long for one and drafted step by step eagerly: the likely
cause of auto K's mean draft time of 5.25 ms (against ~0.6) and its graph captures inside a timed run on an
H100 (BENCHMARKS.md, seventh session; not yet confirmed on a GPU).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

import torch

from ..layers.sampling import fit_vocab, probs_from_logits, sample_from_probs
from ..runner.feed import Feed
from ..spec.saguaro import saguaro_rescale

LOOP_CATCH_UP = 2          # catch-up tokens the loop itself runs (1: the newest token; 2: after a full accept)
_catch_up_forwards = 0


def catch_up_forwards() -> int:
    """Long catch-ups written before a draft loop in this process so far (:func:`shorten_catch_up`). A round
    that ran one paid for the plain steps before it: its time is not a steady-state round's (auto K)."""
    return _catch_up_forwards


@dataclass
class LoopSampler:
    """How the loop turns each step's logits [B, V] into tokens [B].

    greedy: argmax, no distribution (every row at temperature 0). Otherwise each row samples with its
    temperature / top-k / top-p ([B] tensors) from ``uniforms`` [B, K] drawn up front, and q is
    returned; ``saguaro_top[i]`` > 0 rescales the top probabilities of step i by ``saguaro_c``
    (Saguaro sampling, SSD only). ``filtered`` / ``any_greedy`` are known on the host (no sync)."""

    greedy: bool
    temperature: torch.Tensor | None = None
    top_k: torch.Tensor | None = None
    top_p: torch.Tensor | None = None
    uniforms: torch.Tensor | None = None
    filtered: bool = False
    any_greedy: bool = False
    saguaro_c: float | None = None
    saguaro_top: tuple[int, ...] = ()
    top_width: int = 0              # > 1: also return each step's top-``top_width`` token ids (SSD's shadow fork)

    def key(self) -> tuple:
        """What a captured graph depends on besides shapes."""
        return (self.greedy, self.filtered, self.any_greedy, self.saguaro_c, self.saguaro_top, self.top_width)

    def tops(self, logits: torch.Tensor) -> torch.Tensor | None:
        """[B, top_width] best token ids of this step's logits, or None."""
        return logits.topk(min(self.top_width, logits.shape[-1]), dim=-1).indices if self.top_width > 1 else None

    def tensors(self) -> list[torch.Tensor]:
        return [] if self.greedy else [self.temperature, self.top_k, self.top_p, self.uniforms]

    def bind(self, tensors: list[torch.Tensor]) -> "LoopSampler":
        """The same sampler reading its per-row tensors from ``tensors`` (a graph's static buffers)."""
        if self.greedy:
            return self
        t, k, p, u = tensors
        return dataclasses.replace(self, temperature=t, top_k=k, top_p=p, uniforms=u)

    def sample(self, logits: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.greedy:
            return logits.argmax(-1), None
        q = probs_from_logits(logits, self.temperature, self.top_k, self.top_p, self.filtered, self.any_greedy)
        top = self.saguaro_top[min(i, len(self.saguaro_top) - 1)] if self.saguaro_top else 0
        if self.saguaro_c is not None and top > 0:
            q = saguaro_rescale(q, torch.full((q.shape[0],), top, dtype=torch.int64, device=q.device),
                                self.saguaro_c, top)
        return sample_from_probs(q, self.uniforms[:, i]), q


def draft_loop(runner, catch_up: list[Feed], ends: list[int], ks: list[int], sampler: LoopSampler,
               vocab_size: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Draft ks[b] tokens for row b (max(ks) steps) with ``runner`` (the draft's).

    catch_up[b]: row b's step-0 feed (a dummy feed for a row with ks[b] == 0); ends[b]: the row's
    committed length (its newest token sits at ends[b] - 1). Logits are taken over the target's
    vocabulary (``vocab_size``, layers.sampling.fit_vocab). Returns tokens [B, K] int64 on the
    draft's device (zeros past ks[b]), q [B, K, V] (None for a greedy sampler) and each step's top
    token ids [B, K, W] (None unless ``sampler.top_width`` > 1)."""
    K = max(ks, default=0)
    catch_up = shorten_catch_up(runner, catch_up, ks)
    graph = getattr(runner, "graph", None)
    if K > 0 and graph is not None and graph.fits_loop(catch_up, K):
        return graph.loop(catch_up, ends, ks, sampler, vocab_size)
    B = len(catch_up)
    tokens = torch.zeros((B, K), dtype=torch.long, device=runner.device)
    probs = None if sampler.greedy else torch.zeros((B, K, vocab_size), dtype=torch.float32, device=runner.device)
    tops = []
    prev = None
    for i in range(K):
        if i == 0:
            logits = runner.forward(catch_up)                                   # [B, V]
        else:
            feeds = [Feed(f.seq_id, [0], ends[b] - 1 + i, dummy=ks[b] <= i) for b, f in enumerate(catch_up)]
            logits = runner.forward(feeds, (prev[:, None], 0))
        logits = fit_vocab(logits, vocab_size)
        tok, q = sampler.sample(logits, i)
        tokens[:, i] = tok
        if probs is not None:
            probs[:, i] = q
        if sampler.top_width > 1:
            tops.append(sampler.tops(logits))
        prev = tok
    return tokens, probs, (torch.stack(tops, dim=1) if tops else None)


def moved_loop(runner, seqs, ks: list[int], tokens0: torch.Tensor, shift: torch.Tensor, most: int,
               vocab_size: int, sampler: LoopSampler | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drafts [B, K] and their q [B, K, V] (None for a greedy sampler, the default) for a round launched
    before the round in flight has reached the host (engine/spec_overlap.py), as one graph replay of
    ``runner``'s loop (a draft model's, the engine's K/V kept). Each row's length is len(s) + shift[b]
    (device [B]; at most ``most`` more than the host knows); step 0 feeds its two newest tokens ``tokens0``
    [B, 2] (device) at its two newest positions (the older one's K/V is written again, the same token), then
    ks[b] steps follow. The runner holds K/V for every position before those two: the loop of the round in
    flight wrote them."""
    catch_up = [Feed(s.seq_id, [0, 0], len(s) - 2) for s in seqs]
    tokens, probs, _ = runner.graph.loop(catch_up, [len(s) for s in seqs], ks, sampler or LoopSampler(greedy=True),
                                         vocab_size, device_tokens=tokens0, shift=(shift, most))
    return tokens, probs


def moves_on(runner, device, vocab_size: int) -> bool:
    """Whether :func:`moved_loop` can run on ``runner`` for a target on ``device``: its loop is a static-buffer
    program (no tensor parallelism) on that device, over at least the target's vocabulary."""
    g = getattr(runner, "graph", None)
    return g is not None and g.head == 0 and runner.device == torch.device(device) and vocab_size <= runner.vocab_size


def shorten_catch_up(runner, catch_up: list[Feed], ks: list[int]) -> list[Feed]:
    """Write the K/V of every catch-up longer than LOOP_CATCH_UP but its last token with one forward (no
    logits), and return the feeds the loop runs: those rows reduced to their last token."""
    long = [b for b, f in enumerate(catch_up) if ks[b] > 0 and not f.dummy and len(f.tokens) > LOOP_CATCH_UP]
    if not long:
        return catch_up
    global _catch_up_forwards
    _catch_up_forwards += 1
    runner.forward([Feed(catch_up[b].seq_id, catch_up[b].tokens[:-1], catch_up[b].start, num_logits=0) for b in long])
    out = list(catch_up)
    for b in long:
        f = catch_up[b]
        out[b] = replace(f, tokens=f.tokens[-1:], start=f.start + len(f.tokens) - 1)
    return out
