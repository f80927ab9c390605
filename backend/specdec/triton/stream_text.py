"""Streaming text out of the target: each response carries the engine's own text delta.

The engine already turns each round's ids into text (``StepOutput.text_delta``, commit.py): its
incremental detokenizer holds back text that ends in an incomplete UTF-8 sequence, and text that
could still start a stop string, and cuts the text where a stop string is found. So the deltas
concatenate to the engine's text, which is what ``LLM.generate`` returns. The target sends that
delta as ``text_output``; postprocessing passes it on unchanged (it decodes nothing: decoding the
ids a second time there cost a second detokenizer, the ids and their context on every response).

A round whose text is held back still gets its response, with ``text_output`` "" and the round's
``num_output_tokens``: one response per engine round.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.engine import StepOutput


@dataclass(slots=True)
class Chunk:
    """One response of the target: the text delta of one engine round (all of it when not streaming)."""

    text: str                  # the engine's text delta (stop strings cut, incomplete characters held back)
    num_new_tokens: int        # tokens committed since the previous chunk (num_output_tokens)
    final: bool
    finish_reason: str | None = None
    stats: dict | None = None  # seq.stats.as_dict() on request
    cancel_key: str | None = None   # where postprocessing reports a cancelled request (cancel.py)


class ChunkTracker:
    """Per-request chunking on the target side (reads the engine's deltas, never decodes).

    Streaming: one chunk per engine round. Not streaming: the deltas add up to one final chunk.
    """

    __slots__ = ("stream", "pending_tokens", "_parts")

    def __init__(self, stream: bool = True):
        self.stream = stream
        self.pending_tokens = 0          # tokens committed but not yet counted in a chunk
        self._parts: list[str] = []      # not streaming: the deltas so far

    def on_step(self, out: StepOutput) -> Chunk | None:
        self.pending_tokens += len(out.new_token_ids)
        if self.stream:
            text = out.text_delta
        elif out.finished:
            self._parts.append(out.text_delta)
            text = "".join(self._parts)
        else:
            if out.text_delta:
                self._parts.append(out.text_delta)
            return None
        chunk = Chunk(text, self.pending_tokens, out.finished)
        self.pending_tokens = 0
        return chunk
