"""The per-forward message of a tensor-parallel target: rank 0 -> every worker, one broadcast.

Rank 0 owns all scheduling state (sequences, block tables, sampling); a worker holds only its
weight and KV shards. For every forward, rank 0 packs what the forward needs into one int64
vector on its device, ``[header | payload]``, broadcasts it, and every rank runs the same forward
from it:

* :class:`Padded` (decode-shaped steps, cuda_graphs.py): the payload is the graph runner's
  static buffer [ids | RoPE positions | storage positions | slots | block tables]; the header
  names the shape (batch bucket, queries, KV bucket), so every rank replays (or first captures)
  the same graph, in the same order.
* :class:`Eager` (prefill, batches above the largest bucket): [ids | positions | slots | logits
  rows | q_lens | kv_lens | q_starts | block tables B x nb]; every rank builds the same
  attention context from it (:func:`eager_forward`).
* :class:`Graphs` (turn padded forwards on), :class:`Exit`.

Tokens that only rank 0's device holds (the drafts to verify) are written into the ids of the
device vector before the broadcast, so they reach the workers without a host sync on rank 0.
The broadcast has a fixed length (header + capacity; the graph buffer's size once graphs are on)
so that a worker can post it before knowing what comes; an eager payload beyond the capacity
follows in a second broadcast. A worker reads the header on its host: its one sync per forward.
"""
from __future__ import annotations

import enum
from dataclasses import astuple, dataclass

import numpy as np
import torch

from ..config import ATTENTION_BACKENDS
from ..layers.attention import build_context
from ..layers.tensor_parallel import TPGroup

HEADER = 8                   # int64: kind, payload length, up to 6 fields
DEFAULT_CAPACITY = 4096      # payload ints of the fixed broadcast before graphs are on
ATTENTION = ATTENTION_BACKENDS          # the attention setting travels as its index


class Step(enum.IntEnum):
    PADDED = 1
    EAGER = 2
    GRAPHS = 3
    EXIT = 4


@dataclass(slots=True)
class Padded:
    """Replay the graph runner's forward of this shape from the broadcast buffer."""
    batch: int                # batch bucket
    queries: int
    kv_span: int              # KV bucket
    attention: str


@dataclass(slots=True)
class Eager:
    """A variable-length forward; the payload layout is in :func:`pack_eager`."""
    tokens: int               # T
    logits: int               # rows that get logits (T = all of them)
    seqs: int                 # B
    table_width: int          # nb: block-table columns
    attention: str


@dataclass(slots=True)
class Graphs:
    """Build the padded static-buffer runner (cuda_graphs.GraphRunner) like rank 0's."""
    max_batch: int
    max_q: int
    capture: bool


@dataclass(slots=True)
class Exit:
    pass


_KINDS = {Padded: Step.PADDED, Eager: Step.EAGER, Graphs: Step.GRAPHS, Exit: Step.EXIT}
_CLASSES = {v: k for k, v in _KINDS.items()}


def encode_header(msg, payload_len: int = 0) -> np.ndarray:
    fields = [ATTENTION.index(v) if isinstance(v, str) else int(v) for v in astuple(msg)]
    head = np.zeros(HEADER, dtype=np.int64)
    head[: 2 + len(fields)] = [_KINDS[type(msg)], payload_len, *fields]
    return head


def decode_header(head: np.ndarray):
    """(message, payload length) from the first HEADER ints."""
    cls = _CLASSES[Step(int(head[0]))]
    values = [int(x) for x in head[2: 2 + len(cls.__slots__)]]
    kinds = cls.__annotations__
    args = [ATTENTION[v] if kinds[f] == "str" else (bool(v) if kinds[f] == "bool" else v)
            for f, v in zip(cls.__slots__, values)]
    return cls(*args), int(head[1])


class StepChannel:
    """One rank's end of the per-forward broadcast: an int64 vector on the rank's device."""

    def __init__(self, group: TPGroup, device: torch.device):
        self.group, self.device = group, device
        self.msg = torch.zeros(HEADER + DEFAULT_CAPACITY, dtype=torch.int64, device=device)

    @property
    def leader(self) -> bool:
        return self.group.leader

    def reserve(self, n: int) -> torch.Tensor:
        """The message vector, grown so that its payload holds n ints. Every rank calls this at the
        same point of the message stream (a GRAPHS message), so the broadcast lengths stay equal."""
        if self.msg.numel() < HEADER + n:
            self.msg = torch.zeros(HEADER + n, dtype=torch.int64, device=self.device)
        return self.msg

    def broadcast(self) -> None:
        """Rank 0: the message vector as it stands (the graph runner has filled it)."""
        self.group.broadcast(self.msg)

    def send(self, msg, payload: np.ndarray | None = None, place_tokens=None) -> tuple[np.ndarray, torch.Tensor]:
        """Rank 0: header + payload to the device, ``place_tokens(device payload)`` (device-side ids),
        broadcast. Returns the payload on the host and on the device."""
        payload = np.zeros(0, dtype=np.int64) if payload is None else payload
        host = np.concatenate([encode_header(msg, len(payload)), payload])
        cap = self.msg.numel()
        dev = self.msg[: len(host)] if len(host) <= cap else torch.empty(len(host), dtype=torch.int64, device=self.device)
        dev.copy_(torch.from_numpy(host), non_blocking=True)
        if place_tokens is not None:
            place_tokens(dev[HEADER:])
        if len(host) > cap:
            self.msg.copy_(dev[:cap])
        self.group.broadcast(self.msg)
        if len(host) > cap:
            self.group.broadcast(dev[cap:])
        return host[HEADER:], dev[HEADER:]

    def recv(self):
        """Worker: the next message, its payload on the host (EAGER only, else None) and on the device."""
        self.group.broadcast(self.msg)
        msg, length = decode_header(self.msg[:HEADER].cpu().numpy())     # host sync: what to run
        if not isinstance(msg, Eager):
            return msg, None, self.msg[HEADER:]
        n, cap = HEADER + length, self.msg.numel()
        if n > cap:
            rest = torch.empty(n - cap, dtype=torch.int64, device=self.device)
            self.group.broadcast(rest)
            dev = torch.cat([self.msg, rest])
        else:
            dev = self.msg[:n]
        return msg, dev[HEADER:].cpu().numpy(), dev[HEADER:]         # host sync: lengths and tables


def pack_eager(ids, pos, slots, logit_rows, q_lens, kv_lens, q_starts, tables, block_size: int,
               attention: str) -> tuple[Eager, np.ndarray]:
    """The EAGER payload: flat per-token arrays [T] (ids, positions, slots), logit rows [N], per-sequence
    [B] (q_lens, kv_lens, q_starts) and the block tables zero-padded to the width build_context uses."""
    B = len(q_lens)
    nb = -(-max(kv_lens) // block_size)
    table = np.zeros((B, nb), dtype=np.int64)
    for b, t in enumerate(tables):
        n = min(len(t), nb)
        table[b, :n] = t[:n]
    parts = [ids, pos, slots, logit_rows, q_lens, kv_lens, q_starts, table.ravel()]
    payload = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
    return Eager(len(ids), len(logit_rows), B, nb, attention), payload


def eager_forward(runner, msg: Eager, host: np.ndarray, dev: torch.Tensor):
    """Every rank's variable-length forward from an EAGER payload (host copy for the context's
    lengths and tables, device copy for the per-token inputs). Logits on rank 0, None elsewhere."""
    T, N, B, nb = msg.tokens, msg.logits, msg.seqs, msg.table_width
    o = [0]

    def take(n):
        o[0] += n
        return o[0] - n, o[0]

    ids, pos, slots, rows = (slice(*take(n)) for n in (T, T, T, N))
    q_lens, kv_lens, q_starts = (host[slice(*take(B))].tolist() for _ in range(3))
    tables = host[slice(*take(B * nb))].reshape(B, nb)
    ctx = build_context(q_lens, kv_lens, q_starts, tables, dev[slots], runner.blocks.block_size, runner.device,
                        None, msg.attention)
    logits_index = None if N == T else dev[rows]
    return runner.model(dev[ids], dev[pos], ctx, runner.kv_caches, logits_index)
