"""GraphRunner._layout (the host arrays of one padded step), whole-batch numpy, against the per-row rule."""
import numpy as np
import pytest

from specdec.runner.block_manager import BlockManager
from specdec.runner.cuda_graphs import GraphRunner
from specdec.runner.feed import Feed


def per_row(blocks, max_model_len, feeds, Bb, Q, NB):
    """The rule, one row at a time (the layout before it was vectorized)."""
    bs = blocks.block_size
    ids, pos, qpos = (np.zeros((Bb, Q), dtype=np.int64) for _ in range(3))
    slots = np.full((Bb, Q), blocks.sentinel_slot, dtype=np.int64)
    tables = np.full((Bb, NB), blocks.num_blocks, dtype=np.int64)
    rows = []
    for b, f in enumerate(feeds):
        n = len(f.tokens)
        end = f.start + n
        rows.extend(range(b * Q + n - f.num_logits, b * Q + n))
        if f.dummy:
            continue
        assert end <= max_model_len
        table = np.asarray(blocks.ensure(f.seq_id, end), dtype=np.int64)
        p = np.arange(f.start, end)
        ids[b, :n] = f.tokens
        pos[b, :n] = p if f.positions is None else f.positions
        qpos[b, :n] = p
        slots[b, :n] = table[p // bs] * bs + p % bs
        tables[b, : min(len(table), NB)] = table[:NB]
    return ids, pos, qpos, slots, tables, rows


class _Runner:
    def __init__(self, blocks, max_model_len):
        self.blocks, self.max_model_len = blocks, max_model_len


@pytest.mark.parametrize("seed", range(6))
def test_layout_matches_the_per_row_rule(seed):
    rng = np.random.default_rng(seed)
    Q, NB, bs = int(rng.integers(1, 6)), 16, 4
    B = int(rng.integers(1, 9))
    Bb = B + int(rng.integers(0, 4))
    feeds = []
    for b in range(B):
        n = int(rng.integers(1, Q + 1))
        start = int(rng.integers(0, NB * bs - n))
        positions = None if rng.random() < 0.8 else list(rng.integers(0, 999, n))
        feeds.append(Feed(b, list(rng.integers(1, 500, n)), start, num_logits=int(rng.integers(0, n + 1)),
                          positions=positions, dummy=bool(rng.random() < 0.2)))
    a, b = BlockManager(200, bs), BlockManager(200, bs)
    for f in feeds:                       # some sequences already hold more blocks than this step needs
        if rng.random() < 0.5:
            a.ensure(f.seq_id, NB * bs), b.ensure(f.seq_id, NB * bs)
    g = GraphRunner.__new__(GraphRunner)
    g.r = _Runner(a, NB * bs)
    got = g._layout(feeds, Bb, Q, NB)
    want = per_row(b, NB * bs, feeds, Bb, Q, NB)
    for x, y in zip(got[:5], want[:5]):
        np.testing.assert_array_equal(x, y)
    assert got[5] == want[5] and a.tables == b.tables


def test_layout_refuses_a_step_past_max_model_len():
    g = GraphRunner.__new__(GraphRunner)
    g.r = _Runner(BlockManager(50, 4), 32)
    with pytest.raises(ValueError, match="sequence 7: 33 tokens exceed max_model_len=32"):
        g._layout([Feed(1, [5], 3), Feed(7, [5, 6], 31)], 2, 2, 8)
