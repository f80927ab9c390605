"""Capture the CUDA graphs of the common step shapes before a server reports ready.

Graphs are captured the first time a step shape (batch bucket, queries, context bucket, draft-loop
variant) is met, and a capture costs ~10-200 ms. A server that captures on first use puts that cost
into its first users' inter-token latency: on one H100 the 8B+1B pair served by Triton showed ITL p99
of 130 ms at concurrency 4 against a p50 of 13 ms, with 36 captures inside the measured window
(BENCHMARKS.md). :func:`warm_up` runs short greedy requests of dummy tokens through the engine at
every batch bucket and a few prompt lengths, so the steps users meet first are already captured.

It goes through the engine's normal request path (add_request/step), so it captures exactly the keys
real traffic produces at those shapes, and it leaves nothing behind: every request finishes, its KV
blocks go back to the pool, and the engine's counters are zeroed afterwards. CUDA only (other
devices capture nothing).
"""
from __future__ import annotations

import logging
import time

from ..config import SamplingParams
from ..runner.graph_tools import batch_buckets, captures

log = logging.getLogger(__name__)

PROMPT_LENS = (24, 200)        # context buckets 64 and 256: a chat turn's first steps


def dummy_prompt(length: int, row: int, vocab: int) -> list[int]:
    """A prompt of ``length`` in-vocabulary ids, different per row (no prefix shared between rows)."""
    return [(row * 7919 + j * 104729 + 1) % vocab for j in range(length)]


def warm_up(engine, prompt_lens: tuple[int, ...] = PROMPT_LENS, rounds: int = 3, cuda_only: bool = True) -> dict:
    """Run greedy requests of dummy prompts at every batch bucket up to the engine's batch size and at
    each prompt length, ``rounds`` speculative rounds (or decode steps) each. Returns what it did.
    cuda_only=False runs it on any device (tests: the requests it makes must leave nothing behind)."""
    if cuda_only and engine.device.type != "cuda":
        return {"skipped": f"no CUDA graphs on {engine.device.type}"}
    if engine.has_unfinished():
        raise RuntimeError("warm_up runs before any request: the engine has work")
    new_tokens = rounds * (engine.k + 1) + 1      # engine.k is 0 for AR
    vocab = engine.runner.vocab_size
    free0 = engine.runner.num_free_blocks
    c0, t0 = captures(), time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    shapes = 0
    for length in prompt_lens:
        length = min(length, engine.max_model_len - new_tokens - 1)
        if length < 1:
            continue
        for b in batch_buckets(engine.scheduler.max_batch_size):
            for row in range(b):
                engine.add_request(dummy_prompt(length, row, vocab), params)
            while engine.has_unfinished():
                engine.step()
            shapes += 1
    engine.metrics.reset()
    leaked = free0 - engine.runner.num_free_blocks
    if leaked:
        log.warning("warm-up left %d KV blocks in use", leaked)
    done = {"shapes": shapes, "captures": captures() - c0, "seconds": time.perf_counter() - t0}
    log.info("warm-up: %d batch/prompt shapes, %d CUDA graphs captured in %.1f s", done["shapes"], done["captures"],
             done["seconds"])
    return done
