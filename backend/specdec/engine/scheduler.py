"""Continuous batching: which sequences prefill, which decode, and who is preempted.

Sequences join between steps (admission needs a free batch slot and KV room in every model)
and leave when they finish. Before a decode round every running sequence must be able to
hold its lookahead (1 + K tokens in the target, its drafts in the draft); if the pool is
short, the newest sequence is preempted: its KV is freed and it waits to be re-prefilled
from its committed tokens (recompute), keeping its output so far.
"""
from __future__ import annotations

from collections import deque

from .sequence import Sequence, Status


class Scheduler:
    def __init__(self, max_batch_size: int, max_prefill_tokens: int, runner, draft):
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.runner = runner              # the target's runner (its KV pool)
        self.draft = draft                # the engine's DraftSlot: its drafter may come and go
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def admit(self, lookahead: int) -> list[Sequence]:
        """Move waiting sequences to running while batch slots, prefill budget and KV allow."""
        admitted, tokens = [], 0
        while self.waiting and len(self.running) + len(admitted) < self.max_batch_size:
            seq = self.waiting[0]
            n = len(seq)
            if admitted and tokens + n > self.max_prefill_tokens:
                break
            need = {s.seq_id: len(s) + lookahead for s in admitted + [seq]}
            need.update({s.seq_id: len(s) + lookahead for s in self.running})
            if not self.runner.can_hold(need):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            admitted.append(seq)
            tokens += n
        self.running.extend(admitted)
        return admitted

    def make_room(self, ks: dict[int, int]) -> list[Sequence]:
        """Preempt the newest running sequences until every running one fits its next round."""
        preempted = []
        while self.running:
            target_need = {s.seq_id: len(s) + ks.get(s.seq_id, 0) for s in self.running}
            ok = self.runner.can_hold(target_need)
            drafter = self.draft.drafter
            if ok and drafter is not None and self.draft.runner is not None:
                draft_need = {s.seq_id: drafter.needs(s, ks.get(s.seq_id, 0)) for s in self.running}
                ok = self.draft.runner.can_hold(draft_need)
            if ok or len(self.running) == 1:
                break
            seq = self.running.pop()
            self.release(seq)
            seq.status = Status.WAITING
            seq.stats.preemptions += 1
            seq.last_accepted = -2
            self.waiting.appendleft(seq)
            preempted.append(seq)
        return preempted

    def release(self, seq: Sequence) -> None:
        self.runner.free(seq.seq_id)
        if self.draft.drafter is not None:
            self.draft.drafter.free(seq)

    def finish(self, seq: Sequence) -> None:
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.release(seq)
