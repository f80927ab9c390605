"""Overlapped speculative rounds: the GPU never waits for the host between greedy sync rounds.

A round (draft loop, then the verify with its greedy outcome) depends on the round before through
three things, all on the device: the accepted count ``acc`` and the recovery token ``rec`` of each
row, and the draft tokens. So round r+1 is launched from round r's outcome on the device *before*
the host reads round r, as engine/overlap.py does for plain steps:

* each row's length after round r is the host's length (rounds up to r-1 committed) plus
  ``acc + 1``, known on the device only: the runners take it as a per-row position *shift*
  (runner/cuda_graphs.py ``_shifted``): positions move on the device and their slots are looked
  up in block tables that the host grew beforehand to cover the longest outcome;
* the draft loop's step 0 feeds each row's two newest tokens (the last accepted draft, or the
  round's first token when none was accepted, then ``rec``) at the two newest positions
  (draft/loop.py ``moved_loop``); the verify feeds ``rec`` then the new drafts.

While the GPU runs round r+1 the host waits for round r's readback (a pinned copy and an event),
commits it, checks stop conditions and returns its outputs. K/V written by round r+1 lies past
what round r committed, so committing round r truncates nothing (the engine truncates when the
last round in flight is committed). A row that stops at round r wastes its round r+1, whose
outputs are dropped; its blocks go back to the pool, and GPU work is stream-ordered, so nothing
reuses them before round r+1 has run.

Sampled rows overlap too (sync's drafter): the draft loop samples each row with its own parameters and
uniforms and returns q, the verify's graph returns the logits, and the rejection sampling (spec/verify.py)
runs on the device right after it, with the plain round's uniform draws (the same count per row and round,
from the row's own stream for a seeded request, in the same order: the draft's, then the verify's), so a
seeded request gives the same tokens either way.

Used for rounds where every row asks for the same K >= 1 drafts of a model drafter in this process (its
loop a static-buffer program on the target's device), with room for two rounds before max_model_len:
sync's drafter, and SSD's in-process drafter for greedy rows while its build rule drafts like sync
(draft/inprocess.py ``moves``). Anything else drains the round in flight first (:meth:`SpecPipeline.drain`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers.sampling import SamplingRows
from ..runner.feed import Feed
from ..spec.round_k import request_k
from ..spec.verify import GreedyRound, verify
from ..transfer import download, upload
from .overlap import rows_of


@dataclass(slots=True)
class RoundInFlight:
    seqs: list                    # row order of the round
    k: int                        # drafts per row
    first: torch.Tensor           # [B] the verify's first token per row (the newest committed one at launch)
    out: torch.Tensor             # [B, 2 + K] on the device: accepted, recovery token, d_1..d_K (the verify graph's
                                  # output buffer: valid until that graph's next replay)
    host: torch.Tensor            # host copy of out (transfer.download), valid once ``ready`` has completed
    ready: object                 # a CUDA event (None off CUDA: the copy was made at once)
    marks: tuple                  # timer marks before the draft loop, between it and the verify, after the verify
    status: list | None = None    # SSD (draft/inprocess.py): how each row's drafts were produced (RowStatus)


class Logits:
    """An epilogue (runner/cuda_graphs.py) that returns the verify's logits [B, Q, V] as they are: a shifted
    forward needs one, and a round with sampled rows verifies them outside the graph."""

    name = "logits"

    def __init__(self, batch: int):
        self.row_ints = [0] * batch

    def __call__(self, logits: torch.Tensor, verified: torch.Tensor, ints: torch.Tensor) -> torch.Tensor:
        return logits


class SpecPipeline:
    def __init__(self, runner, max_model_len: int, k_max: int, timer, generator: torch.Generator | None = None):
        self.runner, self.max_model_len, self.k_max, self.timer = runner, max_model_len, k_max, timer
        self.generator = generator
        self.inflight: RoundInFlight | None = None

    def round_k(self, drafter, seqs, k_now: int) -> int:
        """The K of an overlapped round for these rows, or 0 where they cannot overlap. They can when every
        row asks for the same K >= 1 drafts (the engine's K now, or its request's own fewer: warm-up requests
        do, so the graphs of overlapped rounds are captured per K), with room for two rounds before
        max_model_len, the target's verify and the draft's loop are static-buffer programs, and the drafter
        can move these rows (``moves``: SSD's only greedy ones). A row near its max_tokens still drafts K (the
        commit stops it where it must; the plain round would draft fewer there): one such row does not hold the
        whole batch back."""
        g = getattr(self.runner, "graph", None)
        moves = getattr(drafter, "moves", None)
        if k_now < 1 or g is None or g.head or moves is None or len(seqs) > g.max_batch or not moves(seqs):
            return 0
        ks = {request_k(k_now, s.params.num_draft_tokens) for s in seqs}
        k = ks.pop()
        if ks or k < 1 or k > self.k_max:
            return 0
        room = 2 * (self.k_max + 1)
        return k if all(len(s) + room < self.max_model_len for s in seqs) else 0

    def advance(self, drafter, seqs, k: int) -> tuple[RoundInFlight, list[list[int]]]:
        """Launch the next round for ``seqs`` (running rows, in flight or not), then wait for the round before
        it. Returns that earlier round and its outcome rows [accepted, recovery, d_1..d_K] for the engine."""
        prev = self.inflight
        if prev is None:
            prev = self._launch(drafter, seqs, k, None)
        self.inflight = self._launch(drafter, seqs, k, prev)
        return prev, self._read(prev)

    def drain(self) -> tuple[RoundInFlight, list[list[int]]] | None:
        """The round in flight and its outcome (waiting for it), or None; nothing is in flight after."""
        prev, self.inflight = self.inflight, None
        return None if prev is None else (prev, self._read(prev))

    @torch.inference_mode()
    def _launch(self, drafter, seqs, k: int, prev: RoundInFlight | None) -> RoundInFlight:
        dev = self.runner.device
        B = len(seqs)
        feeds = [Feed(s.seq_id, [0] * (k + 1), len(s) - 1, num_logits=k + 1) for s in seqs]
        rows = SamplingRows(seqs, dev, self.generator)
        t0 = self.timer.mark()
        if prev is None:                  # from the host's state: the usual proposal (any catch-up)
            first = upload([s.last_token for s in seqs], dev, torch.long)
            prop = drafter.propose(seqs, [k] * B, rows)
            shift = None
        else:
            out, pfirst = rows_of(prev.out, prev.seqs, seqs), rows_of(prev.first, prev.seqs, seqs)
            # first is kept for the next launch: a copy, since the next replay of this graph rewrites its output
            acc, first = out[:, 0], out[:, 1].clone()
            verified = torch.cat([pfirst[:, None], out[:, 2:]], dim=1)   # [last, d_1..d_K'] of the previous round
            tokens0 = torch.stack([verified.gather(1, acc[:, None]).squeeze(1), first], dim=1)
            most = self.k_max + 1             # not prev.k + 1: a graph's context bucket must not depend on it
            shift = (acc + 1, most)
            for s in seqs:                # the target's blocks for the longest outcome, before the layout
                self.runner.blocks.ensure(s.seq_id, len(s) + most + k)
            prop = drafter.propose_moved(seqs, [k] * B, tokens0, *shift, sampling=rows)
        t1 = self.timer.mark()
        drafts = prop.tokens[:, :k]
        dev_tokens = (torch.cat([first[:, None], drafts], dim=1), 0)
        if rows.all_greedy:
            res = self.runner.graph.forward(feeds, dev_tokens, epilogue=GreedyRound([k] * B), shift=shift)  # [B, 2 + k]
        else:
            res = self._sampled(rows, feeds, dev_tokens, drafts, prop.probs, shift)
        t2 = self.timer.mark()
        host, ready = download(res)
        return RoundInFlight(list(seqs), k, first, res, host, ready, (t0, t1, t2), prop.status)

    def _sampled(self, rows: SamplingRows, feeds, dev_tokens, drafts: torch.Tensor, q: torch.Tensor | None,
                 shift) -> torch.Tensor:
        """A round with sampled rows: the verify's logits, then rejection sampling on the device with the plain
        round's uniforms (engine._decode: K + 1 per row, the accept tests' first, the recovery's last), laid out
        like GreedyRound's [B, 2 + k] (accepted, recovery, d_1..d_k)."""
        B, k = drafts.shape
        logits = self.runner.graph.forward(feeds, dev_tokens, epilogue=Logits(B), shift=shift)    # [B, k + 1, V]
        u = rows.uniforms(self.k_max + 1)
        num = torch.full((B,), k, dtype=torch.long, device=drafts.device)
        acc, rec = verify(rows.probs(logits), drafts, None if q is None else q[:, :k], num, u[:, :k],
                          u[:, self.k_max])
        return torch.cat([acc[:, None], rec[:, None], drafts], dim=1)

    @staticmethod
    def _read(r: RoundInFlight) -> list[list[int]]:
        if r.ready is not None:
            r.ready.synchronize()         # host sync: this round's outcome (the next round is already queued)
        return r.host.tolist()
