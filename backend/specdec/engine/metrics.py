"""One metrics object per engine: counters and timers that feed logs, bench JSON and Triton metrics."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch


@dataclass
class EngineMetrics:
    prefill_steps: int = 0
    prefill_tokens: int = 0
    prefill_time: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0          # tokens committed by decode steps, after truncation
    decode_time: float = 0.0
    rounds: int = 0                 # sequence-rounds with >= 1 draft token
    drafted: int = 0
    accepted: int = 0
    spec_tokens: int = 0
    draft_time: float = 0.0
    verify_time: float = 0.0
    draft_steps: int = 0
    verify_steps: int = 0
    cache_hits: int = 0
    cache_lookups: int = 0
    hit_tokens: int = 0
    miss_tokens: int = 0
    channel_wait_time: float = 0.0  # SSD/remote: time the target waited for the draft's reply
    draft_build_time: float = 0.0   # SSD: draft worker's time building speculation caches (off the critical path)
    draft_builds: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    preemptions: int = 0
    ar_fallbacks: int = 0
    tokens_per_round_hist: Counter = field(default_factory=Counter)

    def reset(self) -> None:
        """Zero every counter in place (benchmarks between runs): holders of this object keep seeing it."""
        fresh = EngineMetrics()
        for k, v in fresh.__dict__.items():
            setattr(self, k, v)

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "tokens_per_round_hist"}
        d["tokens_per_round_hist"] = dict(sorted(self.tokens_per_round_hist.items()))
        d["acceptance_rate"] = self.accepted / self.drafted if self.drafted else 0.0
        d["tokens_per_round"] = self.spec_tokens / self.rounds if self.rounds else 0.0
        d["decode_tok_s"] = self.decode_tokens / self.decode_time if self.decode_time else 0.0
        d["avg_draft_ms"] = 1e3 * self.draft_time / self.draft_steps if self.draft_steps else 0.0
        d["avg_verify_ms"] = 1e3 * self.verify_time / self.verify_steps if self.verify_steps else 0.0
        d["cache_hit_rate"] = self.cache_hits / self.cache_lookups if self.cache_lookups else 0.0
        misses = self.cache_lookups - self.cache_hits
        d["tokens_per_round_hit"] = self.hit_tokens / self.cache_hits if self.cache_hits else 0.0
        d["tokens_per_round_miss"] = self.miss_tokens / misses if misses else 0.0
        d["avg_draft_build_ms"] = 1e3 * self.draft_build_time / self.draft_builds if self.draft_builds else 0.0
        d["avg_channel_wait_ms"] = 1e3 * self.channel_wait_time / self.draft_steps if self.draft_steps else 0.0
        return d


class Timer:
    """Phase timing without host syncs. ``mark()`` records a CUDA event on the device's stream (a
    wall-clock read on the CPU); ``seconds(a, b)`` is read after the step's own sync (the
    ``.tolist()`` that brings tokens to the host), when both marks have completed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        return time.perf_counter()

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.device))
        return ev

    def seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a
