"""Block manager: hands out fixed-size KV blocks from a pool and keeps one block table per sequence.

Rollback is by length: ``truncate(seq, n)`` keeps the blocks that hold the first n tokens and
returns the rest to the pool; nothing is copied, and stale K/V in a kept block is overwritten
by the next write at that position before anything reads it.
"""
from __future__ import annotations

from collections import deque


class OutOfBlocks(RuntimeError):
    pass


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self.tables: dict[int, list[int]] = {}

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

    def ensure(self, seq_id: int, num_tokens: int) -> list[int]:
        """Grow the block table of ``seq_id`` to hold ``num_tokens`` tokens; returns the table."""
        table = self.tables.setdefault(seq_id, [])
        extra = self.blocks_for(num_tokens) - len(table)
        if extra > len(self._free):
            raise OutOfBlocks(f"KV cache full: sequence {seq_id} needs {extra} more blocks, {len(self._free)} free")
        for _ in range(extra):
            table.append(self._free.popleft())
        return table

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        table = self.tables.get(seq_id)
        if table is None:
            return
        keep = self.blocks_for(num_tokens)
        while len(table) > keep:
            self._free.append(table.pop())

    def free(self, seq_id: int) -> None:
        table = self.tables.pop(seq_id, None)
        if table:
            self._free.extend(reversed(table))

    def slot(self, seq_id: int, pos: int) -> int:
        table = self.tables[seq_id]
        return table[pos // self.block_size] * self.block_size + pos % self.block_size
