"""A request's scheduling state on the host.

Commit convention (the same in AR, sync and async modes):

* ``token_ids`` = prompt + every generated token so far; all of them are committed and
  emitted. The last one (the previous round's *recovery/bonus* token, or the token the prefill
  sampled) has no K/V yet in either model: a round always starts by feeding it.
* So the target caches ``len(token_ids) - 1`` tokens at the start of every round. A round
  verifies [last, d1..dK] at positions len-1 .. len-1+K and commits d1..dk plus the new
  recovery token t* (k accepted draft tokens, 1 + k new tokens); the target then caches
  ``len - 1`` tokens again, since K/V for rejected drafts lies beyond it and is overwritten.
* ``draft_cached`` is how many tokens the draft model holds K/V for (<= len(token_ids) - 1);
  its next proposal first catches up on ``token_ids[draft_cached:]``.
"""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from ..config import SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class SeqStats:
    rounds: int = 0            # speculative rounds (verify forwards) this request took part in
    drafted: int = 0           # draft tokens proposed to the verifier
    accepted: int = 0          # draft tokens accepted
    spec_tokens: int = 0       # tokens committed by speculative rounds (accepted + recovery)
    ar_steps: int = 0          # plain autoregressive steps
    cache_hits: int = 0        # SSD: rounds whose outcome was in the speculation cache
    cache_lookups: int = 0
    hit_tokens: int = 0        # SSD: tokens committed in rounds after a hit / after a miss
    miss_tokens: int = 0
    preemptions: int = 0

    def as_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.__slots__}
        d["acceptance_rate"] = self.accepted / self.drafted if self.drafted else 0.0
        d["tokens_per_round"] = self.spec_tokens / self.rounds if self.rounds else 0.0
        if self.cache_lookups:
            hits = self.cache_hits
            misses = self.cache_lookups - hits
            d["cache_hit_rate"] = hits / self.cache_lookups
            d["tokens_per_round_hit"] = self.hit_tokens / hits if hits else 0.0
            d["tokens_per_round_miss"] = self.miss_tokens / misses if misses else 0.0
        return d


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    draft_cached: int = 0
    last_accepted: int = -2          # k of the previous verify; -2 = no previous round (forces a cache miss)
    stats: SeqStats = field(default_factory=SeqStats)
    generator: torch.Generator | None = None
    arrival: float = 0.0
    first_token_time: float | None = None
    detok: object = None             # IncrementalDetokenizer, set by the engine
    emitted_chars: int = 0           # characters of detok.text already streamed
    stream_text: bool = True         # False: decode the text once at the end (nobody reads deltas)

    def __post_init__(self):
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def prefill_ids(self) -> list[int]:
        """The ids a (re)prefill writes K/V for: the prompt, or after a preemption every committed id but the
        newest (which the next round feeds)."""
        return self.prompt_ids + self.output_ids[:-1] if self.output_ids else self.prompt_ids

    def tokens_from(self, start: int) -> list[int]:
        """token_ids[start:] without building the whole list (a long prompt's copy per row per round)."""
        n = len(self.prompt_ids)
        return self.prompt_ids[start:] + self.output_ids if start < n else self.output_ids[start - n:]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def remaining(self) -> int:
        return self.params.max_tokens - len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def running(self) -> bool:
        return self.status is Status.RUNNING
