"""Typed messages between the target engine (rank 0) and a draft worker (rank 1).

Every message is a dataclass with a :class:`Command`; on the wire it is one fused int64
payload (plus, for a speculation reply, one float32 tensor of draft probabilities), never a
pickle. ``encode`` returns ``(ints, floats)``; ``decode(ints, floats)`` rebuilds the message.
Floats (temperatures, top-p, Saguaro's C) travel bit-cast into the int64 payload.

Conversation:

* CONFIG (target -> draft) once after joining; the draft answers HELLO. CONFIG may be sent
  again between requests to change K, fan-out, backup or Saguaro's C (e.g. in a sweep).
* PREFILL (no answer): new sequences' tokens; the draft fills its KV cache and, in async
  mode, builds the first speculation cache (keyed with k = -2, the "after prefill" outcome).
* SPECULATE -> SPECULATE_REPLY every round: the outcome keys and the tokens the draft has not
  seen; the reply carries per-row status (hit / JIT / fast / none), K tokens per row, and q
  for sampled rows that need one.
* FREE (no answer): sequences that finished or were preempted.
* EXIT: the worker returns.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import torch

from ..spec.round_k import request_k
from ..spec.status import RowStatus  # noqa: F401  (re-exported: the protocol's row status)

BACKUPS = ("jit", "fast", "auto")
TREE_POLICIES = ("auto", "always")


class Command(enum.Enum):
    CONFIG = 1
    HELLO = 2
    PREFILL = 3
    SPECULATE = 4
    SPECULATE_REPLY = 5
    FREE = 6
    EXIT = 7


def f32_bits(x) -> np.ndarray:
    """float32 values -> their bit patterns as int64 (sign-extended)."""
    return np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)


def bits_f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).astype(np.int32).view(np.float32)


def _ints(*parts) -> np.ndarray:
    return np.concatenate([np.atleast_1d(np.asarray(p, dtype=np.int64)) for p in parts]) if parts else np.zeros(0, np.int64)


class _Reader:
    """Consumes a flat int64 payload front to back."""

    def __init__(self, ints: np.ndarray):
        self.a, self.i = np.asarray(ints, dtype=np.int64), 0

    def take(self, n: int) -> np.ndarray:
        out = self.a[self.i: self.i + n]
        if len(out) != n:
            raise ValueError(f"message payload too short: wanted {n} more ints at {self.i}, have {len(self.a)}")
        self.i += n
        return out

    def one(self) -> int:
        return int(self.take(1)[0])


@dataclass(slots=True)
class Config:
    """Target -> draft: what to speculate. The target's SpecConfig is authoritative."""

    command = Command.CONFIG
    k: int
    async_mode: bool
    fan_out_hit: list[int]           # [K+1]
    fan_out_miss: list[int]          # [K+1]; used after a JIT miss
    fan_out_fast: list[int]          # [K+1]; used after a fast (random-token) miss
    geometric: bool
    sampler_x: float | None          # Saguaro C, None = off
    backup: str                      # "jit" | "fast" | "auto"
    vocab_size: int                  # the target's vocabulary (q covers exactly this many tokens)
    max_batch_size: int
    max_model_len: int               # the target's; the draft's positions must reach it (plus the tree)
    seed: int
    tree_policy: str = "auto"        # "always": a tree every round; "auto": the build rule decides

    def encode(self):
        x = -1 if self.sampler_x is None else int(np.float64(self.sampler_x).view(np.int64))
        return _ints(self.k, int(self.async_mode), int(self.geometric), x, BACKUPS.index(self.backup),
                     self.vocab_size, self.max_batch_size, self.max_model_len, self.seed,
                     TREE_POLICIES.index(self.tree_policy), self.fan_out_hit, self.fan_out_miss, self.fan_out_fast), None

    @classmethod
    def decode(cls, ints, floats=None) -> "Config":
        r = _Reader(ints)
        k, am, geo, x, bk, vocab, mbs, mml, seed, tp = (r.one() for _ in range(10))
        hit, miss, fast = (r.take(k + 1).tolist() for _ in range(3))
        sx = None if x == -1 else float(np.int64(x).view(np.float64))
        return cls(k, bool(am), hit, miss, fast, bool(geo), sx, BACKUPS[bk], vocab, mbs, mml, seed, TREE_POLICIES[tp])


@dataclass(slots=True)
class Hello:
    """Draft -> target, answering CONFIG: the draft's vocabulary and capacity, and how its runner runs."""

    command = Command.HELLO
    vocab_size: int                  # the draft model's own vocabulary size
    max_model_len: int
    kv_tokens: int                   # KV capacity of the draft, in tokens
    pid: int
    graphs: bool = False             # the worker's decode-shaped steps replay CUDA graphs
    attention: str = ""              # the worker runner's attention backend

    def encode(self):
        code = list(self.attention.encode()[:32])
        return _ints(self.vocab_size, self.max_model_len, self.kv_tokens, self.pid, int(self.graphs), len(code),
                     code), None

    @classmethod
    def decode(cls, ints, floats=None) -> "Hello":
        r = _Reader(ints)
        vocab, mml, kv, pid, graphs, n = (r.one() for _ in range(6))
        return cls(vocab, mml, kv, pid, bool(graphs), bytes(r.take(n).tolist()).decode())


@dataclass(slots=True)
class Prefill:
    """Target -> draft: sequences to cache. tokens[b] are all of sequence b's tokens that have K/V
    in the target (the prompt, or everything but the last token after a preemption)."""

    command = Command.PREFILL
    seq_ids: list[int]
    tokens: list[list[int]]
    k: list[int]                     # the most draft tokens each sequence will ask for
    temperature: list[float]
    top_k: list[int]
    top_p: list[float]

    @classmethod
    def of(cls, seqs, k: int) -> "Prefill":
        """The message for engine sequences ``seqs`` under the configured K (each request may ask for fewer)."""
        ps = [s.params for s in seqs]
        return cls([s.seq_id for s in seqs], [list(s.prefill_ids) for s in seqs],
                   [request_k(k, p.num_draft_tokens) for p in ps], [p.temperature for p in ps],
                   [p.top_k for p in ps], [p.top_p for p in ps])

    def encode(self):
        lens = [len(t) for t in self.tokens]
        flat = np.concatenate([np.asarray(t, np.int64) for t in self.tokens]) if self.tokens else []
        return _ints(len(self.seq_ids), self.seq_ids, self.k, f32_bits(self.temperature), self.top_k,
                     f32_bits(self.top_p), lens, flat), None

    @classmethod
    def decode(cls, ints, floats=None) -> "Prefill":
        r = _Reader(ints)
        n = r.one()
        ids, k, t, tk, tp, lens = (r.take(n) for _ in range(6))
        flat = r.take(int(lens.sum())).tolist()
        offs = np.concatenate([[0], np.cumsum(lens)])
        toks = [flat[offs[i]: offs[i + 1]] for i in range(n)]
        return cls(ids.tolist(), toks, k.tolist(), bits_f32(t).tolist(), tk.tolist(), bits_f32(tp).tolist())


@dataclass(slots=True)
class Speculate:
    """Target -> draft, every round. Row b's cache key is (seq_ids[b], k_prev[b], recovery[b]);
    new_tokens[b] are the committed tokens the draft has not been told about (normally the
    accepted drafts and the recovery token, ending with recovery[b])."""

    command = Command.SPECULATE
    seq_ids: list[int]
    k_prev: list[int]                # accepted in the previous round; -2 = first round after PREFILL
    recovery: list[int]              # t*, the last committed token (no K/V yet)
    num_tokens: list[int]            # committed length including t*
    k: list[int]                     # draft tokens wanted per row (0 = none)
    new_tokens: list[list[int]]
    temperature: list[float]
    top_k: list[int]
    top_p: list[float]
    verify_us: int = 0               # the target's recent verify time (for backup="auto")

    def encode(self):
        lens = [len(t) for t in self.new_tokens]
        flat = np.concatenate([np.asarray(t, np.int64) for t in self.new_tokens]) if self.new_tokens else []
        return _ints(len(self.seq_ids), self.verify_us, self.seq_ids, self.k_prev, self.recovery, self.num_tokens,
                     self.k, f32_bits(self.temperature), self.top_k, f32_bits(self.top_p), lens, flat), None

    @classmethod
    def decode(cls, ints, floats=None) -> "Speculate":
        r = _Reader(ints)
        n, vus = r.one(), r.one()
        ids, kp, rec, num, k, t, tk, tp, lens = (r.take(n) for _ in range(9))
        flat = r.take(int(lens.sum())).tolist()
        offs = np.concatenate([[0], np.cumsum(lens)])
        new = [flat[offs[i]: offs[i + 1]] for i in range(n)]
        return cls(ids.tolist(), kp.tolist(), rec.tolist(), num.tolist(), k.tolist(), new,
                   bits_f32(t).tolist(), tk.tolist(), bits_f32(tp).tolist(), vus)


@dataclass(slots=True)
class SpeculateReply:
    """Draft -> target. tokens [B, K] (zero past a row's k); probs [n_q, K, V] float32 holds q for
    the rows that need one, in row order: sampled rows (temperature > 0) with status HIT or JIT."""

    command = Command.SPECULATE_REPLY
    status: np.ndarray               # [B] RowStatus values
    tokens: np.ndarray               # [B, K] int64
    probs: torch.Tensor | None = None
    build_us: int = 0                # how long the draft spent building the previous cache

    def encode(self):
        B, K = self.tokens.shape
        return _ints(B, K, self.build_us, self.status, self.tokens.reshape(-1)), \
            (None if self.probs is None else self.probs.reshape(-1))

    @classmethod
    def decode(cls, ints, floats=None) -> "SpeculateReply":
        r = _Reader(ints)
        B, K, bus = r.one(), r.one(), r.one()
        status, tokens = r.take(B).copy(), r.take(B * K).reshape(B, K).copy()
        return cls(status, tokens, floats, bus)


@dataclass(slots=True)
class Free:
    command = Command.FREE
    seq_ids: list[int] = field(default_factory=list)

    def encode(self):
        return _ints(len(self.seq_ids), self.seq_ids), None

    @classmethod
    def decode(cls, ints, floats=None) -> "Free":
        r = _Reader(ints)
        return cls(r.take(r.one()).tolist())


@dataclass(slots=True)
class Exit:
    command = Command.EXIT

    def encode(self):
        return _ints(0), None

    @classmethod
    def decode(cls, ints, floats=None) -> "Exit":
        return cls()


MESSAGE_TYPES = {c.command: c for c in (Config, Hello, Prefill, Speculate, SpeculateReply, Free, Exit)}


def decode(command: Command, ints: np.ndarray, floats: torch.Tensor | None = None):
    return MESSAGE_TYPES[command].decode(ints, floats)
