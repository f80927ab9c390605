"""How the draft produced a row's speculation this round; the speculation cache's hit/miss vocabulary.

A *hit*: the verification outcome (k, t*) of the previous round was one the draft had forked, so the
next speculation came ready from the speculation cache. A *miss* is served by a backup: JIT (the
draft model drafts the row on the critical path) or FAST (uniform random tokens).
"""
from __future__ import annotations

import enum


class RowStatus(enum.IntEnum):
    """How the draft produced a row's tokens this round."""

    JIT = 0      # cache miss, drafted on the critical path (q = the draft's, sent)
    HIT = 1      # speculation cache hit (q = the branch's, sent)
    FAST = 2     # cache miss, uniform random tokens (q = uniform over the target vocab, not sent)
    NONE = 3     # the row asked for no tokens
