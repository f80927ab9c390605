"""Copy-on-write forks in the block manager (SSD's tree branches): shared full blocks, a copied
partial block, reference counts, and every block back in the pool once the last holder is gone."""
import pytest
import torch

from specdec.runner.block_manager import BlockManager, OutOfBlocks, copy_blocks


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    bm = BlockManager(10, 4)
    parent = bm.ensure(1, 10)                         # 3 blocks: 0-3, 4-7, 8-9
    copies = bm.fork(1, -1, 6)                        # shares block 0, copies block 1 (positions 4, 5)
    child = bm.tables[-1]
    assert child[0] == parent[0] and child[1] != parent[1] and copies == [(parent[1], child[1])]
    assert bm.refs[parent[0]] == 2 and bm.refs[parent[1]] == 1 and bm.refs[child[1]] == 1
    assert bm.num_free == 10 - 4
    assert bm.fork(1, -2, 8) == []                    # on a block boundary: nothing to copy
    assert bm.tables[-2] == parent[:2] and bm.refs[parent[1]] == 2
    assert not bm.exclusive_from(-2, 0) and bm.exclusive_from(-1, 4) and not bm.exclusive_from(-1, 3)
    bm.ensure(-2, 12)                                 # the child grows into a block of its own
    assert bm.exclusive_from(-2, 8)
    bm.free(1)                                        # the parent leaves first: shared blocks stay held
    assert bm.refs[parent[0]] == 2 and bm.num_free == 10 - 5 + 1
    bm.free(-1)
    bm.free(-2)
    assert bm.num_free == 10 and not bm.tables and (bm.refs == 0).all()


def test_truncate_and_errors():
    bm = BlockManager(6, 4)
    bm.ensure(1, 12)
    bm.fork(1, 2, 9)                                  # shares 2 blocks, copies the third
    bm.truncate(2, 3)                                 # drops one shared and its copied block
    assert bm.refs[bm.tables[1][1]] == 1 and bm.num_free == 6 - 3
    with pytest.raises(ValueError):
        bm.fork(1, 2, 4)                              # the child exists
    with pytest.raises(ValueError):
        bm.fork(1, 3, 13)                             # beyond what the parent holds
    bm.ensure(4, 12)                                  # 3 more: the pool is empty now
    with pytest.raises(OutOfBlocks):
        bm.fork(1, 5, 5)                              # needs a block for its partial copy
    assert 5 not in bm.tables and bm.refs[bm.tables[1][0]] == 2     # nothing half-done
    for s in (1, 2, 4):
        bm.free(s)
    assert bm.num_free == 6 and (bm.refs == 0).all()


def test_copy_blocks_copies_every_layer_and_half():
    kv = torch.randn(3, 2, 5, 4, 2, 8)                # [layers, 2, blocks + 1, block_size, KVH, D]
    before = kv.clone()
    copy_blocks(kv, [(1, 3), (2, 0)])
    assert torch.equal(kv[:, :, 3], before[:, :, 1]) and torch.equal(kv[:, :, 0], before[:, :, 2])
    assert torch.equal(kv[:, :, 1:3], before[:, :, 1:3]) and torch.equal(kv[:, :, 4], before[:, :, 4])


def test_fork_many_matches_single_forks_and_frees_in_one_pass():
    a, b = BlockManager(40, 4), BlockManager(40, 4)
    for bm in (a, b):
        bm.ensure(1, 10)
    lens = [10, 8, 9, 3]
    import numpy as np
    out = np.full((4, 6), -7)
    tables, copies = a.fork_many(1, [-1, -2, -3, -4], lens, reserve=3, out=out)
    for row, t in zip(out.tolist(), tables):
        assert row[: len(t)] == t and set(row[len(t):]) <= {-7}
    want_copies = []
    for c, n in zip([-1, -2, -3, -4], lens):
        want_copies += b.fork(1, c, n)
        b.ensure(c, n + 3)
    assert copies == want_copies and tables == [b.tables[c] for c in (-1, -2, -3, -4)]
    assert (a.refs == b.refs).all() and a.num_free == b.num_free
    a.unfork(1, [-1, -2], lens[:2])
    a.free_many([-3, -4])
    assert a.num_free == 40 - 3 and a.refs[a.tables[1]].tolist() == [1, 1, 1]
    with pytest.raises(OutOfBlocks):
        a.fork_many(1, [-5, -6], [10, 10], reserve=100)         # all or nothing
    assert -5 not in a.tables and a.refs[a.tables[1]].tolist() == [1, 1, 1] and a.num_free == 37
    a.free(1)
    assert a.num_free == 40 and (a.refs == 0).all()
