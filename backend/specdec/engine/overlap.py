"""Overlapped autoregressive decoding: the GPU never waits for the host between AR steps.

Plain decoding has one data dependency between steps, the sampled token, and it lives on the
device. So step r+1 is launched from step r's tokens on the device *before* the host reads step r:
while the GPU runs r+1, the host waits for r's readback (a pinned copy and an event, not a blocking
``.tolist()``), commits r's tokens, checks stop conditions and returns r's outputs. One step is
always in flight.

What the host cannot know when it launches r+1 is whether a row stops at r on EOS or a stop
string; such a row's step r+1 is wasted and its token dropped (its K/V lies beyond the sequence
and its blocks go back to the pool; GPU work is stream-ordered, so nothing reuses them before
r+1 has run). Rows that surely stop at r (their last allowed token, or the context limit) are
placeholder rows in r+1.

Sampled rows overlap too: their token is sampled on the device right after the step's forward, with
the plain path's sampler and its uniform draws (one per row and step, from the row's own stream for a
seeded request), so a seeded request gives the same tokens either way. A row's draw for a step that is
dropped (it stopped at the step before) comes after its last token and changes nothing.

Used for rounds where no row drafts (plain decoding, or k_policy auto choosing K = 0 with a drafter that
needs no target hidden states) and the runner's steps are padded static-buffer steps (CUDA graphs on GPU). Anything else — an admission, a preemption, a drafter attaching — first drains the step in
flight (:meth:`ARPipeline.drain`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers.sampling import SamplingRows
from ..runner.feed import Feed
from ..spec.verify import GreedyRound
from ..transfer import download, upload


def rows_of(t: torch.Tensor, launched: list, seqs: list) -> torch.Tensor:
    """The rows of ``t`` (one per sequence of ``launched``, in that order) for ``seqs``, a subset of them in order
    (rows that stopped, were preempted or aborted since have left): ``t`` itself when none left, else one gather."""
    if [id(s) for s in seqs] == [id(s) for s in launched]:
        return t
    row = {id(s): i for i, s in enumerate(launched)}
    return t.index_select(0, upload([row[id(s)] for s in seqs], t.device, torch.long))


@dataclass(slots=True)
class InFlight:
    seqs: list                    # row order of the step
    out: torch.Tensor             # [B, 2] on the device: (accepted = 0, next token) per row
    host: torch.Tensor            # pinned copy of out, valid once ``ready`` has completed
    ready: object                 # a CUDA event (None on CPU: the copy was synchronous)


class ARPipeline:
    def __init__(self, runner, max_model_len: int, generator: torch.Generator):
        self.runner, self.max_model_len, self.generator = runner, max_model_len, generator
        self.inflight: InFlight | None = None

    @staticmethod
    def usable(runner, seqs) -> bool:
        """Whether the runner's steps for these rows are padded static-buffer steps (the caller checks that
        no row drafts this round)."""
        graph = getattr(runner, "graph", None)
        return graph is not None and getattr(runner, "tp", None) is None and len(seqs) <= graph.max_batch

    def _launch(self, seqs, prev: InFlight | None) -> InFlight:
        """One AR step for ``seqs``: row b feeds the token step ``prev`` produced for it (on the device),
        or its last committed token when nothing is in flight."""
        feeds = []
        for s in seqs:
            if prev is None:
                feeds.append(Feed(s.seq_id, [s.last_token], len(s) - 1))
                continue
            done = s.remaining <= 1 or len(s) + 1 >= self.max_model_len     # surely stops at prev's token
            feeds.append(Feed(s.seq_id, [0], len(s), dummy=done))
        dev_tokens = None if prev is None else (rows_of(prev.out, prev.seqs, seqs)[:, 1:2], 0)
        rows = SamplingRows(seqs, self.runner.device, self.generator)
        if rows.all_greedy:
            out = self.runner.forward(feeds, dev_tokens, epilogue=GreedyRound([0] * len(seqs)))   # [B, 2]
        else:
            out = self._sampled(rows, feeds, dev_tokens)
        host, ready = download(out)
        return InFlight(list(seqs), out, host, ready)

    def _sampled(self, rows: SamplingRows, feeds, dev_tokens) -> torch.Tensor:
        """A step with sampled rows: each row's token drawn on the device as the engine's plain AR step draws
        it (SamplingRows.sample), laid out like GreedyRound's [B, 2] (0, token)."""
        tok = rows.sample(self.runner.forward(feeds, dev_tokens))                # [B]
        return torch.stack([torch.zeros_like(tok), tok], dim=1)

    def advance(self, seqs) -> tuple[InFlight, list[int]]:
        """Launch the next step for ``seqs`` (the running ones, in flight or not), then wait for the step
        before it. Returns that earlier step and its tokens, one per row, for the engine to commit."""
        prev = self.inflight
        if prev is None:
            prev = self._launch(seqs, None)
        self.inflight = self._launch(seqs, prev)
        return prev, self._read(prev)

    def drain(self) -> tuple[InFlight, list[int]] | None:
        """The step in flight and its tokens (waiting for it), or None; nothing is in flight after."""
        prev, self.inflight = self.inflight, None
        return None if prev is None else (prev, self._read(prev))

    @staticmethod
    def _read(step: InFlight) -> list[int]:
        if step.ready is not None:
            step.ready.synchronize()          # host sync: this step's tokens (the next one is already queued)
        return step.host[:, 1].tolist()
