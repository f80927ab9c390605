"""Committing a round's tokens to a sequence: max_tokens, EOS, stop token ids and stop strings are
applied inside the accepted block (a stop may land mid-round), and the text delta to stream is
derived; text that could still become a stop string is held back until it cannot."""
from __future__ import annotations

from .sequence import Sequence


def commit_tokens(s: Sequence, new: list[int], eos_ids: set[int], max_model_len: int) -> tuple[list[int], str, str | None]:
    """Append tokens to s until a stop condition; returns (emitted ids, text delta, finish reason or None)."""
    p = s.params
    emitted: list[int] = []
    reason, by_string = None, False
    for tok in new:
        emitted.append(tok)
        s.output_ids.append(tok)
        if p.stop:
            before = len(s.detok.text)
            s.detok.push([tok])
            cut = _find_stop(s.detok.text, before, p.stop)
            if cut is not None:
                s.detok.text = s.detok.text[:cut]
                reason, by_string = "stop", True
                break
        if (not p.ignore_eos and tok in eos_ids) or tok in p.stop_token_ids:
            reason = "stop"
            break
        if len(s.output_ids) >= p.max_tokens or len(s) >= max_model_len:
            reason = "length"
            break
    if not p.stop and (s.stream_text or reason is not None):
        # ids not yet turned into text (all of them, for a request nobody streams)
        s.detok.push(s.output_ids[len(s.detok.ids):], final=reason is not None)
    elif p.stop and reason is not None and not by_string:
        s.detok.push([], final=True)
    text = s.detok.text
    end = len(text) if reason is not None else len(text) - _held_back(text, p.stop)
    delta = text[s.emitted_chars:end] if end > s.emitted_chars else ""
    s.emitted_chars = max(s.emitted_chars, end)
    return emitted, delta, reason


def _find_stop(text: str, before: int, stops: list[str]) -> int | None:
    """Index of the earliest stop string that ends in text[before:], or None."""
    start = max(0, before - max(len(x) for x in stops) + 1)
    hits = [i for i in (text.find(x, start) for x in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for x in stops:
        for n in range(min(len(x) - 1, len(text)), best, -1):
            if text.endswith(x[:n]):
                best = n
                break
    return best
