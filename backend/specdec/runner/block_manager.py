"""Block manager: hands out fixed-size KV blocks from a pool and keeps one block table per sequence.

Rollback is by length: ``truncate(seq, n)`` keeps the blocks that hold the first n tokens and
returns the rest to the pool; nothing is copied, and stale K/V in a kept block is overwritten
by the next write at that position before anything reads it.

Copy-on-write forks (SSD's tree branches): ``fork(parent, child, n)`` gives ``child`` the parent's
first n tokens. The full blocks below n are *shared* (a reference count per block; a block goes
back to the pool when its last holder drops it); the partial block holding tokens
``n // block_size * block_size .. n - 1``, if any, is *copied* into a fresh block of the child's, so
the child writes its own tokens from position n on without touching the parent. The manager does
not own the K/V tensor: ``fork`` returns the (src, dst) block copies and the caller runs them
(:func:`copy_blocks`, one gather and one scatter over every layer). Writing into a shared block is
the caller's error; :meth:`BlockManager.exclusive_from` tells whether a position may be written.
"""
from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import torch

from ..transfer import upload


class OutOfBlocks(RuntimeError):
    pass


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self.tables: dict[int, list[int]] = {}
        self.refs = np.zeros(num_blocks, dtype=np.int32)      # holders of each block (0 = free)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def sentinel_slot(self) -> int:
        """The slot padded rows write to: block ``num_blocks`` is allocated in the pool but never handed out."""
        return self.num_blocks * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def extra_blocks(self, seq_id: int, num_tokens: int) -> int:
        """Blocks still needed so that ``seq_id`` can hold ``num_tokens`` tokens."""
        have = len(self.tables.get(seq_id, ()))
        return max(0, self.blocks_for(num_tokens) - have)

    def can_hold(self, needs: dict[int, int]) -> bool:
        """needs: seq_id -> num_tokens; True when all of them fit at once."""
        return sum(self.extra_blocks(s, n) for s, n in needs.items()) <= self.num_free

    def _take(self, n: int, seq_id: int) -> list[int]:
        if n > len(self._free):
            raise OutOfBlocks(f"KV cache full: sequence {seq_id} needs {n} more blocks, {len(self._free)} free")
        out = [self._free.popleft() for _ in range(n)]
        self.refs[out] = 1
        return out

    def _drop(self, blocks) -> None:
        """Release one reference per listed block (a block may be listed once per holder); blocks nobody
        holds any more go back to the pool."""
        idx = np.asarray(blocks, dtype=np.int64)
        if idx.size == 0:
            return
        if idx.size > 64:                                   # bincount: ufunc.at is slow on long lists
            self.refs -= np.bincount(idx, minlength=self.num_blocks).astype(np.int32)
        else:
            np.subtract.at(self.refs, idx, 1)
        gone = idx[self.refs[idx] == 0]
        if gone.size > 1:
            _, first = np.unique(gone, return_index=True)
            gone = gone[np.sort(first)]
        self._free.extend(gone[::-1].tolist())

    def ensure(self, seq_id: int, num_tokens: int) -> list[int]:
        """Grow the block table of ``seq_id`` to hold ``num_tokens`` tokens; returns the table."""
        table = self.tables.setdefault(seq_id, [])
        extra = self.blocks_for(num_tokens) - len(table)
        if extra > 0:
            table.extend(self._take(extra, seq_id))
        return table

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        table = self.tables.get(seq_id)
        if table is None:
            return
        keep = self.blocks_for(num_tokens)
        if len(table) > keep:
            dropped = table[keep:]
            del table[keep:]
            self._drop(dropped)

    def free(self, seq_id: int) -> None:
        table = self.tables.pop(seq_id, None)
        if table:
            self._drop(table)

    def fork(self, parent_seq: int, child_seq: int, num_tokens: int) -> list[tuple[int, int]]:
        """``child_seq`` (new) starts as the first ``num_tokens`` tokens of ``parent_seq``: full blocks
        shared, the partial block copied. Returns the (src, dst) block copies the caller must run on the
        K/V tensor before the child's next forward (at most one)."""
        if child_seq in self.tables:
            raise ValueError(f"fork: sequence {child_seq} already exists")
        table = self.tables.get(parent_seq)
        if table is None or len(table) < self.blocks_for(num_tokens):
            have = 0 if table is None else len(table) * self.block_size
            raise ValueError(f"fork: sequence {parent_seq} holds {have} token slots, fewer than {num_tokens}")
        full, part = divmod(num_tokens, self.block_size)
        shared = table[:full]
        if shared:
            np.add.at(self.refs, np.asarray(shared, dtype=np.int64), 1)
        child = list(shared)
        copies = []
        if part:
            try:
                dst = self._take(1, child_seq)[0]
            except OutOfBlocks:
                self._drop(shared)
                raise
            child.append(dst)
            copies.append((table[full], dst))
        self.tables[child_seq] = child
        return copies

    def fork_many(self, parent_seq: int, child_seqs: list[int], num_tokens: list[int], reserve: int = 0,
                  out: np.ndarray | None = None) -> tuple[list[list[int]], list[tuple[int, int]]]:
        """:meth:`fork` for many children of one parent at once (SSD's branches of one sequence), each
        child also grown to hold ``reserve`` more tokens. Returns the children's tables and the block
        copies; ``out`` [children, W], if given, receives the tables (padding untouched). All or nothing:
        raises OutOfBlocks before changing anything when the pool is short."""
        table = self.tables.get(parent_seq)
        n = np.asarray(num_tokens, dtype=np.int64)
        if table is None or (len(n) and len(table) < self.blocks_for(int(n.max()))):
            raise ValueError(f"fork: sequence {parent_seq} holds fewer than {int(n.max()) if len(n) else 0} tokens")
        if any(c in self.tables for c in child_seqs) or len(set(child_seqs)) != len(child_seqs):
            raise ValueError("fork: a child sequence already exists")
        if not len(n):
            return [], []
        bs = self.block_size
        full, part = n // bs, n % bs
        new = -(-(n + reserve) // bs) - full                # each child's own blocks: the copied partial one, the rest
        total = int(new.sum())
        if total > len(self._free):
            raise OutOfBlocks(f"KV cache full: {len(child_seqs)} forks of sequence {parent_seq} need "
                              f"{total} blocks, {len(self._free)} free")
        parent = np.asarray(table, dtype=np.int64)
        held = np.zeros(len(parent) + 1, dtype=np.int64)   # children holding each parent block
        np.add.at(held, full, 1)
        self.refs[parent] += held[::-1].cumsum()[::-1][1:].astype(np.int32)
        own = [self._free.popleft() for _ in range(total)]
        self.refs[own] = 1
        starts = np.concatenate([[0], np.cumsum(new)[:-1]])
        tables, copies = [], []
        for i, c in enumerate(child_seqs):
            mine = own[starts[i]: starts[i] + new[i]]
            if part[i]:
                copies.append((table[full[i]], mine[0]))
            t = table[: full[i]] + mine
            self.tables[c] = t
            tables.append(t)
        if out is not None:
            cols = np.arange(out.shape[1])[None, :]
            f = full[:, None]
            own_arr = np.asarray(own, dtype=np.int64)
            in_parent = cols < f
            in_own = (cols >= f) & (cols < f + new[:, None])
            out[in_parent] = parent[np.broadcast_to(cols, in_parent.shape)[in_parent]]
            out[in_own] = own_arr[(starts[:, None] + cols - f)[in_own]]
        return tables, copies

    def unfork(self, parent_seq: int, child_seqs: list[int], num_tokens: list[int]) -> None:
        """Free children made by :meth:`fork_many` (same ``num_tokens``) that still share the parent's blocks
        they were forked with: one vectorised pass instead of one per child."""
        table = self.tables.get(parent_seq)
        n = np.asarray(num_tokens, dtype=np.int64)
        full = n // self.block_size
        if table is None or any(self.tables.get(c, [None])[: f] != table[: f] for c, f in zip(child_seqs, full)):
            self.free_many(child_seqs)                      # the parent changed meanwhile: the general path
            return
        own = [b for c, f in zip(child_seqs, full) for b in self.tables.pop(c)[f:]]
        parent = np.asarray(table, dtype=np.int64)
        held = np.zeros(len(parent) + 1, dtype=np.int64)
        np.add.at(held, full, 1)
        self.refs[parent] -= held[::-1].cumsum()[::-1][1:].astype(np.int32)
        self._drop(own)

    def free_many(self, seq_ids: list[int]) -> None:
        """Free several sequences at once (one pass over their blocks)."""
        tables = [self.tables.pop(s) for s in seq_ids if s in self.tables]
        count = sum(len(t) for t in tables)
        if count:
            self._drop(np.fromiter(itertools.chain.from_iterable(tables), dtype=np.int64, count=count))

    def exclusive_from(self, seq_id: int, pos: int) -> bool:
        """True when every block of ``seq_id`` holding positions >= pos belongs to it alone (writable)."""
        table = self.tables.get(seq_id, [])
        tail = table[pos // self.block_size:]
        return not tail or bool((self.refs[np.asarray(tail, dtype=np.int64)] == 1).all())

    def slot(self, seq_id: int, pos: int) -> int:
        table = self.tables[seq_id]
        return table[pos // self.block_size] * self.block_size + pos % self.block_size


def copy_blocks(kv: torch.Tensor, copies: list[tuple[int, int]], block_dim: int = 2) -> None:
    """Run a fork's block copies on the K/V tensor: kv[..., dst, ...] = kv[..., src, ...] for every
    layer and K/V half at once. kv: [layers, 2, num_blocks + 1, block_size, KVH, D] (block_dim 2)."""
    if not copies:
        return
    pairs = upload(copies, kv.device, torch.long)     # [n, 2]
    kv.index_copy_(block_dim, pairs[:, 1], kv.index_select(block_dim, pairs[:, 0]))
