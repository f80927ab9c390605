"""Streaming text across two Triton models: the target sends ids, postprocessing turns them into text.

The target knows the request's state, postprocessing is stateless. A :class:`Chunk` therefore
carries a *window* of output ids: ``context_length`` ids whose text was already streamed (the
"few preceding ids"), then the ids to render. :func:`decode_chunk` renders it with the same rule as
the engine's :class:`~specdec.engine.detokenizer.IncrementalDetokenizer` (text ending in an
incomplete UTF-8 sequence waits for the next ids), and :class:`ChunkTracker` moves the window
exactly as the engine's detokenizer moves its own. So the concatenated ``text_output`` deltas equal
the engine's text, which is what ``LLM.generate`` returns.

Stop strings are matched on text by the engine, which holds back text that could start one and
cuts the text where one is found. The tracker follows: while the engine holds text back, the
chunk renders nothing (its ids are rendered with the next chunk), and the last chunk carries
``max_chars`` so postprocessing cuts where the engine cut.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine.detokenizer import IncrementalDetokenizer
from ..engine.engine import StepOutput


@dataclass(slots=True)
class Chunk:
    """One response of the target: a window of output ids and what to render of it."""

    window: list[int]          # output ids; the first context_length were streamed already
    context_length: int
    num_new_tokens: int        # tokens committed since the previous chunk (num_output_tokens)
    final: bool
    max_chars: int = -1        # > -1: render at most this many characters (stop-string cut)
    finish_reason: str | None = None
    stats: dict | None = None  # seq.stats.as_dict() on request
    cancel_key: str | None = None   # where postprocessing reports a cancelled request (cancel.py)


def decode_chunk(tokenizer, window: list[int], context_length: int, final: bool, max_chars: int = -1,
                 skip_special_tokens: bool = True) -> str:
    """Text of ``window[context_length:]`` given ``window[:context_length]`` as context."""
    if context_length > len(window) or context_length < 0:
        raise ValueError(f"context_length={context_length} is out of range: allowed [0, {len(window)}]")
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens, ids=window[:context_length])
    text = detok.push(list(window[context_length:]), final=final)
    return text if max_chars < 0 else text[:max_chars]


class ChunkTracker:
    """Per-request window bookkeeping on the target side (reads the engine's state, never decodes).

    ``start``..``rendered`` is the window of ids whose text has been streamed (its tail is the
    context of the next chunk); ``streamed_chars`` is how much of the engine's text that was.
    """

    def __init__(self, stream: bool = True):
        self.stream = stream
        self.start = 0
        self.rendered = 0
        self.streamed_chars = 0
        self.pending_tokens = 0          # tokens committed but not yet counted in a chunk

    def on_step(self, out: StepOutput) -> Chunk | None:
        seq = out.seq
        ids = seq.output_ids
        end = len(ids)
        self.pending_tokens += len(out.new_token_ids)
        stops = bool(seq.params.stop)
        if out.finished:
            cut = seq.emitted_chars - self.streamed_chars if stops else -1
            if not self.stream:
                chunk = Chunk(list(ids), 0, self.pending_tokens, True, seq.emitted_chars if stops else -1)
            else:
                chunk = Chunk(ids[self.start:end], self.rendered - self.start, self.pending_tokens, True, cut)
            self.pending_tokens = 0
            return chunk
        if not self.stream:
            return None
        all_rendered = seq.detok.read == end                                    # no incomplete UTF-8 tail
        held = stops and seq.emitted_chars < len(seq.detok.text)                # could start a stop string
        if all_rendered and not held:
            chunk = Chunk(ids[self.start:end], self.rendered - self.start, self.pending_tokens, False)
            self.start, self.rendered = self.rendered, end
            self.streamed_chars = seq.emitted_chars
        else:   # nothing to show yet: send the round's ids as context only (renders "")
            n = len(out.new_token_ids)
            chunk = Chunk(ids[end - n:end], n, self.pending_tokens, False)
        self.pending_tokens = 0
        return chunk
