"""The draft side driven directly (no process, no channel): the tree decode, the cache and the KV
bookkeeping must give, at temperature 0, exactly the draft's own greedy continuation of every
context, whichever path (prefill tree, round tree, JIT) produced it."""
import itertools
import random

import pytest
import torch
from tiny import PROMPTS

from specdec.runner.feed import Feed
from specdec.runner.paged import PagedRunner
from specdec.models.loader import load_model
from specdec.draft.core import DraftCore
from specdec.draft.messages import Config, Prefill, RowStatus, Speculate

K = 3
_ids = itertools.count(10_000)


pytestmark = pytest.mark.usefixtures("one_thread")   # several processes share 2 cores


@pytest.fixture(scope="module")
def draft(tiny_llama_draft):
    return load_model(str(tiny_llama_draft), torch.device("cpu"), "float32", max_positions=600)


def make_core(model, async_mode=True, fan=(2, 2, 2, 2), backup="jit", blocks=600):
    runner = PagedRunner(model.module, torch.device("cpu"), torch.float32, 16, blocks, 560, "draft")
    V = model.vocab_size
    cfg = Config(K, async_mode, list(fan), list(fan), [sum(fan)] + [0] * K, False, None, backup, V, 8, 512, 0)
    return DraftCore(runner, torch.device("cpu"), cfg)


def greedy(runner: PagedRunner, ctx: list[int], n: int) -> list[int]:
    """Reference: plain decoding with a fresh sequence in the same pool."""
    sid, out = next(_ids), []
    logits = runner.forward([Feed(sid, ctx, 0)])
    for i in range(n):
        t = int(logits[-1].argmax())
        out.append(t)
        logits = runner.forward([Feed(sid, [t], len(ctx) + i)])
    runner.free(sid)
    return out


def _prefill(core, prompts, sids, temperature=0.0):
    n = len(prompts)
    core.prefill(Prefill(sids, [list(p) for p in prompts], [K] * n, [temperature] * n, [0] * n, [1.0] * n))
    core.finish()                                                   # the build's one host sync: trees cached


def _speculate(core, sids, k_prev, contexts, new, temperature=0.0):
    n = len(sids)
    return core.speculate(Speculate(sids, k_prev, [c[-1] for c in contexts], [len(c) for c in contexts], [K] * n,
                                    new, [temperature] * n, [0] * n, [1.0] * n, 0))


def test_prefill_tree_branches_are_greedy_continuations(draft):
    core = make_core(draft)
    prompts, sids = PROMPTS[:3], [1, 2, 3]
    _prefill(core, prompts, sids)
    for sid, p in zip(sids, prompts):
        e = core.cache.entries[sid]
        assert len(e.keys) == 8 and (e.keys[:, 0] == -2).all()          # the whole budget at depth 0
        assert len(set(e.keys[:, 1].tolist())) == 8
        for (k, c), toks in zip(e.keys.tolist(), e.tokens.tolist()):
            assert toks == greedy(core.runner, list(p) + [c], K), (sid, c)


@pytest.mark.parametrize("async_mode", [True, False], ids=["async", "sync"])
def test_rounds_return_the_drafts_greedy_continuation(draft, async_mode):
    """Simulate the target: each round commits k of the drafts plus a recovery token that is either
    a forked candidate (a hit) or any other token (a miss). Every reply, from the cache or JIT,
    must equal the draft's greedy continuation of the committed context."""
    rng = random.Random(0)
    core = make_core(draft, async_mode)
    free0 = core.runner.num_free_blocks
    prompts, sids = [list(p) for p in PROMPTS[:4]], [11, 12, 13, 14]
    _prefill(core, prompts, sids)
    V = draft.vocab_size
    ctx = [p + [rng.randrange(V)] for p in prompts]              # the target's first sampled token
    k_prev = [-2] * 4
    new = [[c[-1]] for c in ctx]
    seen = {RowStatus.HIT: 0, RowStatus.JIT: 0}
    for _ in range(6):
        reply = _speculate(core, sids, k_prev, ctx, new)
        for b, sid in enumerate(sids):
            st = RowStatus(int(reply.status[b]))
            assert st in ((RowStatus.HIT, RowStatus.JIT) if async_mode else (RowStatus.JIT,))
            seen[st] += 1
            assert reply.tokens[b].tolist() == greedy(core.runner, ctx[b], K), (sid, st)
        core.build()
        core.finish()
        if not async_mode:
            assert not core.cache.entries
        for b, sid in enumerate(sids):                            # the target's verdict
            d = reply.tokens[b].tolist()
            k = rng.randrange(K + 1)
            e = core.cache.entries.get(sid)
            cands = [] if e is None else [c for kk, c in e.keys.tolist() if kk == k]
            if cands and rng.random() < 0.6:
                t = rng.choice(cands)
            else:
                t = rng.choice([x for x in range(V) if k == K or x != d[k]])
            new[b] = d[:k] + [t]
            ctx[b] = ctx[b] + new[b]
            k_prev[b] = k
    if async_mode:
        assert seen[RowStatus.HIT] > 0 and seen[RowStatus.JIT] > 0
    core.free(sids)
    assert core.runner.num_free_blocks == free0                    # no leaked KV blocks
    assert not core.seqs and not core.cache.entries


def test_sampled_rows_cache_the_q_their_tokens_came_from(draft):
    core = make_core(draft)
    _prefill(core, [PROMPTS[0]], [21], temperature=0.9)
    e = core.cache.entries[21]
    assert e.probs is not None and e.probs.shape == (8, K, draft.vocab_size)
    assert torch.allclose(e.probs.sum(-1), torch.ones(8, K), atol=1e-5)
    picked = e.probs.gather(-1, torch.from_numpy(e.tokens)[..., None]).squeeze(-1)
    assert (picked > 0).all()                                     # each token was possible under its q


def test_fast_backup_and_full_pool(draft):
    """backup="fast" answers misses with uniform tokens (no q sent); a draft whose KV pool cannot
    hold a sequence degrades to the same fast answer instead of failing."""
    core = make_core(draft, backup="fast")
    ctx = [list(PROMPTS[2]) + [5]]
    _prefill(core, [PROMPTS[2]], [31])
    keys = core.cache.entries[31].keys[:, 1].tolist()
    t = next(x for x in range(draft.vocab_size) if x not in keys)
    ctx = [list(PROMPTS[2]) + [t]]
    reply = _speculate(core, [31], [-2], ctx, [[t]], temperature=0.8)
    assert reply.status.tolist() == [RowStatus.FAST] and reply.probs is None
    tiny = make_core(draft, blocks=1)                              # 16 tokens: not even the prompt fits
    long = list(range(1, 40))
    _prefill(tiny, [long], [41])
    reply = _speculate(tiny, [41], [-2], [long + [7]], [[7]])
    assert reply.status.tolist() == [RowStatus.FAST]


def test_whole_tree_graph_body_matches_the_step_loop(draft, monkeypatch):
    """The greedy build's graph body (all K steps on the device: forward, argmax, next token) gives the
    same trees as the step loop; here the body runs eagerly (CPU), as after a failed capture."""
    from specdec.draft import tree_steps
    entries = {}
    for whole in (False, True):
        core = make_core(draft)
        if whole:
            core.tree.steps.capture = True
            monkeypatch.setattr(tree_steps.TreeSteps, "_capture", lambda self, key: 1 / 0)
        _prefill(core, PROMPTS[:3], [1, 2, 3])
        entries[whole] = {sid: (e.keys.tolist(), e.tokens.tolist()) for sid, e in core.cache.entries.items()}
        if whole:
            assert core.tree.steps.eager_runs == 1 and core.tree.steps.graphs
    assert entries[True] == entries[False] and len(entries[True]) == 3
