"""The drafter interface: what the engine asks of anything that proposes draft tokens.

Drafters: :class:`~.ngram.NgramDrafter` (prompt lookup), :class:`~.model.ModelDrafter` (a draft model
in this process: a separate checkpoint or ``self:N``), :class:`~.inprocess.InProcessDrafter` (SSD with the
draft in this process, on a second CUDA stream or a thread) and :class:`~.remote.RemoteDrafter` (a draft
worker process over a channel; SSD on its own GPU, and ``remote:tcp://...``).

The engine's ``step()`` thread is a drafter's only user. Per round it calls :meth:`Drafter.propose`
once with the running sequences and the number of draft tokens each row wants (``ks``), launches the
verify forward, calls :meth:`Drafter.overlap`, verifies, then calls :meth:`Drafter.commit` per row with
the verification outcome. Sequences leave through :meth:`Drafter.free` (finished or preempted).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import torch

from ..layers.sampling import SamplingRows
from ..spec.status import RowStatus


@dataclass(slots=True)
class Proposal:
    """One round's draft tokens for B rows, and what verification needs to stay exact."""

    tokens: torch.Tensor              # [B, K] int64 on the target's device (entries past num[b] are ignored)
    probs: torch.Tensor | None        # [B, K, V] q each token was sampled from, or None when q is one-hot at tokens
    num: list[int]                    # drafts proposed per row (<= what the row asked for)
    status: list[RowStatus] | None = None   # SSD: how each row's speculation was produced (hit, JIT, fast)
    wait_s: float = 0.0               # time the target waited for the draft's answer (a remote worker)
    build_s: float = 0.0              # SSD: how long the worker's last cache build took (off the critical path)
    extra: dict = field(default_factory=dict)


class Drafter:
    """Base of every drafter; the defaults suit a drafter with no state outside this process.

    ``wants_hidden``: the drafter reads the target's final hidden states (EAGLE, draft/eagle.py); the
    engine then asks the target for them and calls :meth:`observe` after every forward that commits."""

    wants_hidden = False

    def observe(self, seq, start: int, hidden: torch.Tensor) -> None:
        """(``wants_hidden`` only) the target's final hidden states [n, H] of ``seq``'s positions
        start .. start + n - 1, all of them committed tokens' (prefill: every fed position; a decode
        round: the last committed position before the round and the accepted drafts)."""

    def prefill(self, seqs: list) -> None:
        """New (or resumed) sequences, before the target's prefill (a remote worker overlaps the two)."""

    def propose(self, seqs: list, ks: list[int], sampling: SamplingRows) -> Proposal:
        """Draft up to ks[b] tokens for row b (0 = none)."""
        raise NotImplementedError

    def overlap(self) -> None:
        """Called once per round right after the target's verify forward was launched: work the drafter
        may queue while the target verifies (SSD in the target's process: the next speculation tree)."""

    def commit(self, seq, old_len: int, accepted: int, num_draft: int, in_flight: bool = False) -> None:
        """Row ``seq`` had ``old_len`` tokens before the round; ``accepted`` of its ``num_draft`` drafts were kept.
        in_flight: the row's next round is already running (only drafters with ``propose_moved`` overlap
        rounds: engine/spec_overlap.py), so draft state past this round must be kept."""

    def free(self, seq) -> None:
        """The sequence left the batch (finished or preempted): drop its draft state."""

    def needs(self, seq, k: int) -> int:
        """KV tokens the draft must hold in this process for ``seq`` in a round with k drafts (0: none)."""
        return 0

    def configure(self, spec) -> None:
        """New speculation settings (K, fan-out, ...) between requests."""

    def close(self, send_exit: bool = True) -> None:
        """Release what the drafter holds (a channel, a worker)."""
