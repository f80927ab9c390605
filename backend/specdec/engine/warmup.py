"""Capture the CUDA graphs of the common step shapes before a server reports ready.

Graphs are captured the first time a step shape (batch bucket, queries, context bucket, draft-loop
variant) is met, and a capture costs ~10-200 ms. A server that captures on first use puts that cost
into its first users' inter-token latency: on one H100 the 8B+1B pair served by Triton showed ITL p99
of 130 ms at concurrency 4 against a p50 of 13 ms, with 36 captures inside the measured window
(BENCHMARKS.md). :func:`warm_up` runs short greedy requests of dummy tokens through the engine at
every batch bucket, context bucket and draft count, so the steps users meet first are already captured.
Under k_policy auto it runs each draft count with auto K off (auto K would pick lower ones: on an H100 the
bench's capped passes left 3 captures to its timed run), then the drafts' K/V-only catch-up forwards that
follow auto K's plain steps (runner/cuda_graphs.py warm_kv_writes). SSD in this process runs the grid twice:
with trees, then with its build rule held at "no tree", whose rounds go through the overlapped pipeline (their
own keys: shifted verify and draft loop); then the core forgets what the dummy prompts measured.

Which shapes: for every batch bucket, every context bucket from 64 up to ``max_context`` (a prompt that
fills half of the bucket, so the run stays inside it) and every draft count k from K down to 0 (the
request's ``num_draft_tokens``: the last rounds of a request draft fewer than K tokens, and their verify
and draft-loop graphs differ). A draft loop after a round that accepted every draft catches up two tokens,
not one: a different key that dummy prompts reach only where the draft agrees with the target. On one
H100, warming only two prompt lengths at K left 28-41 captures for the first perf_analyzer runs (context
bucket 128 and short last rounds), and ITL p99 at 6-10x p50.

It goes through the engine's normal request path (add_request/step), so it captures exactly the keys
real traffic produces at those shapes, and it leaves nothing behind: every request finishes, its KV
blocks go back to the pool, and the engine's counters are zeroed afterwards. CUDA only (other
devices capture nothing).
"""
from __future__ import annotations

import logging
import time

from ..config import SamplingParams
from ..runner.graph_tools import MIN_KV_BUCKET, batch_buckets, captures

log = logging.getLogger(__name__)

MAX_CONTEXT = 2048             # context buckets warmed: 64 .. this (longer chats capture on first use)


def dummy_prompt(length: int, row: int, vocab: int) -> list[int]:
    """A prompt of ``length`` in-vocabulary ids, different per row (no prefix shared between rows)."""
    return [(row * 7919 + j * 104729 + 1) % vocab for j in range(length)]


def prompt_lengths(max_context: int, max_model_len: int, new_tokens: int) -> list[int]:
    """One prompt length per context bucket 64, 128, ... <= max_context: the bucket's lower half plus one (its
    contexts stay inside the bucket while ``new_tokens`` are generated), 24 for the first bucket."""
    lens, c = [], MIN_KV_BUCKET
    while c <= min(max_context, max_model_len):
        length = 24 if c == MIN_KV_BUCKET else c // 2 + 1
        if length + new_tokens < min(c, max_model_len):
            lens.append(length)
        c *= 2
    return lens


def warm_up(engine, max_context: int = MAX_CONTEXT, rounds: int = 2, cuda_only: bool = True,
            prompt_lens: tuple[int, ...] | None = None) -> dict:
    """Run greedy requests of dummy prompts at every batch bucket up to the engine's batch size, every
    context bucket up to ``max_context`` (or the given prompt lengths) and every draft count k = K .. 0,
    ``rounds`` rounds each. Returns what it did. cuda_only=False runs it on any device (tests: the requests
    it makes must leave nothing behind)."""
    if cuda_only and engine.device.type != "cuda":
        return {"skipped": f"no CUDA graphs on {engine.device.type}"}
    if engine.has_unfinished():
        raise RuntimeError("warm_up runs before any request: the engine has work")
    K = engine.k                                   # 0 for AR
    vocab = engine.runner.vocab_size
    free0 = engine.runner.num_free_blocks
    c0, t0 = captures(), time.perf_counter()
    lens = prompt_lens or prompt_lengths(max_context, engine.max_model_len, rounds * (K + 1) + 1)
    auto, engine.auto_k = engine.auto_k, None      # k_policy auto: each count drafts exactly k (auto picks lower ones)
    hold = getattr(engine.drafter, "hold_rule", None) if K else None     # SSD in this process
    try:
        shapes = _run_shapes(engine, lens, K, rounds, vocab)
        if hold is not None and hold(False):               # its rounds drafted like sync, overlapped
            shapes += _run_shapes(engine, lens, K, rounds, vocab)
    finally:
        engine.auto_k = auto
        if hold is not None:
            hold(None)
    if auto is not None:                           # the drafts' catch-ups after auto K's plain steps
        for r in engine.runners[1:]:
            if getattr(r, "graph", None) is not None:
                r.graph.warm_kv_writes(engine.scheduler.max_batch_size, min(max_context, engine.max_model_len))
    engine.metrics.reset()
    engine.reset_auto_k()                          # dummy prompts' acceptance and timings must not steer K
    if hold is not None:
        engine.drafter.forget()                    # nor the build rule's choice of trees
    leaked = free0 - engine.runner.num_free_blocks
    if leaked:
        log.warning("warm-up left %d KV blocks in use", leaked)
    done = {"shapes": shapes, "captures": captures() - c0, "seconds": time.perf_counter() - t0}
    log.info("warm-up: %d batch/context/k shapes, %d CUDA graphs captured in %.1f s", done["shapes"],
             done["captures"], done["seconds"])
    return done


def _run_shapes(engine, lens: list[int], K: int, rounds: int, vocab: int) -> int:
    """The requests of :func:`warm_up`: every prompt length x draft count x batch bucket; returns the shapes run."""
    shapes = 0
    for length in lens:
        for k in range(K, -1, -1) if K else [None]:
            n = rounds * ((k or 0) + 1) + 1
            length_k = min(length, engine.max_model_len - n - 1)
            if length_k < 1:
                continue
            params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, num_draft_tokens=k)
            for b in batch_buckets(engine.scheduler.max_batch_size):
                for row in range(b):
                    engine.add_request(dummy_prompt(length_k, row, vocab), params)
                while engine.has_unfinished():
                    engine.step()
                shapes += 1
    return shapes
