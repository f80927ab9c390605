"""SSD building blocks as pure functions: fan-out allocation, Saguaro rescaling, cache lookup,
tree layout, messages, the backup rule, and config validation."""
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from specdec.config import EngineConfig, SpecConfig
from specdec.spec.adaptive import Adaptive, choose_backup
from specdec.config import check_fan_out
from specdec.spec.fanout import (acceptance_mle, fit_power_law, geometric_fan_out, outcome_probs,
                                 resolve_fan_out, round_to_budget, saguaro_top)
from specdec.draft.messages import (Command, Config, Exit, Free, Hello, Prefill, RowStatus, Speculate,
                                   SpeculateReply, decode)
from specdec.spec.saguaro import saguaro_rescale
from specdec.spec.spec_cache import CacheEntry, SpeculationCache, expected_len, lookup
from specdec.spec.tree import branch_positions, branch_slots, fork, fork_layout, ranked_candidates
from specdec.spec.verify import verify


# --- fan-out ---------------------------------------------------------------------------------
def test_geometric_fan_out_worked_example():
    # ssd-algorithm.md 1.6: K=7, B=24, a=0.8, r=1 -> [3.9, 3.5, 3.1, 2.8, 2.5, 2.2, 2.0, 4.0]
    assert geometric_fan_out(0.8, 1.0, 7, 24) == [4, 3, 3, 3, 3, 2, 2, 4]


def test_geometric_fan_out_extremes_and_caps():
    assert geometric_fan_out(0.0, 1.0, 3, 12) == [12, 0, 0, 0]        # nothing is ever accepted
    assert geometric_fan_out(1.0, 1.0, 3, 12) == [0, 0, 0, 12]        # everything is
    fan = geometric_fan_out(0.5, 1.0, 3, 40, vocab_size=12)           # caps: V-1 below K, V at K
    assert sum(fan) == 40 and max(fan[:3]) <= 11 and fan[3] <= 12
    with pytest.raises(ValueError):
        geometric_fan_out(0.5, 1.0, 1, 40, vocab_size=12)             # 11 + 12 < 40


def test_geometric_fan_out_maximises_the_hit_probability():
    """Theorem 12: F_k proportional to P(k)^(1/(1+r)) maximises sum_k P(k) (1 - F_k^-r) under
    sum F_k = B. The real-valued allocation beats random ones; the integer list is within 5% of
    the best integer allocation (brute force; the law makes F = 1 worthless, which rounding ignores)."""
    K, B = 3, 16
    rng = np.random.default_rng(0)
    for alpha, r in [(0.3, 0.5), (0.6, 1.0), (0.9, 2.0)]:
        p = outcome_probs(alpha, K)

        def hit(f):
            f = np.asarray(f, dtype=float)
            return float(sum(pk * (1 - fk ** -r) for pk, fk in zip(p, f) if fk > 0))

        w = p ** (1 / (1 + r))
        x = B * w / w.sum()
        others = rng.dirichlet(np.ones(K + 1), size=2000) * B
        assert max(hit(y) for y in others) <= hit(x) + 1e-12
        best = max(hit(f) for f in itertools.product(range(B + 1), repeat=K + 1) if sum(f) == B)
        geo = geometric_fan_out(alpha, r, K, B)
        assert sum(geo) == B and hit(geo) >= 0.95 * best, (alpha, r, geo)


def test_round_to_budget():
    assert round_to_budget([1, 1, 1], 7, [9, 9, 9]) in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    assert round_to_budget([10, 1, 1], 9, [4, 9, 9]) == [4, 3, 2] or round_to_budget([10, 1, 1], 9, [4, 9, 9]) == [4, 2, 3]
    assert round_to_budget([1, 0, 0], 5, [2, 2, 2]) == [2, 2, 1]      # overflow spills past the weights
    with pytest.raises(ValueError):
        round_to_budget([1, 1], 5, [2, 2])


def test_outcome_probs_sum_to_one():
    for a in (0.0, 0.3, 1.0):
        assert abs(outcome_probs(a, 5).sum() - 1) < 1e-12


def test_estimators_recover_alpha_and_r():
    rng = np.random.default_rng(0)
    K, alpha = 5, 0.7
    geo = rng.geometric(1 - alpha, size=20000) - 1                      # accepted before the first rejection
    k = np.minimum(geo, K)
    assert abs(acceptance_mle(k, np.full_like(k, K)) - alpha) < 0.01
    r = 1.5                                                             # P(rank >= F) = F^-r, F >= 1
    u = rng.random(50000)
    rank = np.floor(u ** (-1 / r)).astype(int) - 1                      # rank >= F-1  <=>  u <= F^-r
    counts = np.bincount(np.minimum(rank, 32), minlength=33)
    assert abs(fit_power_law(counts[:32], counts[32]) - r) < 0.1
    assert fit_power_law(np.zeros(32), 3) is None                       # too little data


def test_check_fan_out_and_spec_config_errors():
    assert check_fan_out("f", [1, 0, 2], 2) == [1, 0, 2]
    for bad in ([1, 2], [1, -1, 2], [0, 0, 0], [1.0, 1, 1], "3"):
        with pytest.raises(ValueError):
            check_fan_out("f", bad, 2)
    with pytest.raises(ValueError, match="K\\+1 = 5"):
        SpecConfig(k=4, fan_out_hit=[3, 3, 3])
    with pytest.raises(ValueError, match="same budget"):
        SpecConfig(k=2, fan_out_hit=[3, 3, 3], fan_out_miss=[8, 0, 0])
    with pytest.raises(ValueError, match="fan_out"):
        SpecConfig(fan_out="uniform")
    with pytest.raises(ValueError, match="fan_out"):
        SpecConfig(fan_out=0)
    with pytest.raises(ValueError, match="sampler_x"):
        SpecConfig(sampler_x=1.5)
    with pytest.raises(ValueError, match="backup"):
        SpecConfig(backup="slow")
    with pytest.raises(ValueError, match="tcp://"):
        SpecConfig(draft="remote:localhost")
    with pytest.raises(ValueError, match="async"):
        EngineConfig(mode="sync", spec=SpecConfig(draft="ngram", sampler_x=0.5))
    SpecConfig(k=2, fan_out_hit=[2, 1, 3], fan_out_miss=[6, 0, 0], sampler_x=0.25, backup="auto")


def test_resolve_fan_out_defaults():
    assert resolve_fan_out(SpecConfig(k=2, fan_out=3)) == ([3, 3, 3], [3, 3, 3], [9, 0, 0], False)
    assert resolve_fan_out(SpecConfig(k=2, fan_out_hit=[1, 2, 3])) == ([1, 2, 3], [1, 2, 3], [6, 0, 0], False)
    assert resolve_fan_out(SpecConfig(k=2, fan_out_hit=[1, 2, 3], fan_out_miss=[6, 0, 0]))[1:3] == ([6, 0, 0], [6, 0, 0])
    hit, _, _, geo = resolve_fan_out(SpecConfig(k=3, fan_out="geometric", fan_out_budget=10))
    assert geo and sum(hit) == 10
    assert saguaro_top([2, 0, 1]) == [3, 0, 2]


def test_adaptive_geometric_lists_follow_measured_acceptance():
    a = Adaptive(k=3, budget=12, vocab_size=100, geometric=True, fan_out_hit=[3] * 4, fan_out_miss=[3] * 4,
                 fan_out_fast=[12, 0, 0, 0])
    start = a.fan_out(RowStatus.HIT)
    assert sum(start) == 12
    for i in range(256):                                               # the draft is never accepted
        a.observe(RowStatus.HIT, 0, 3)
        a.observe_rank(i % 3)
    low = a.fan_out(RowStatus.HIT)
    assert sum(low) == 12 and low[0] > start[0] and low[0] >= 10
    assert a.fan_out(RowStatus.FAST)[0] == 12


# --- backup choice ---------------------------------------------------------------------------
def test_choose_backup():
    assert choose_backup(4, 0, 3.0, 3.0, 1.0, 0.01, 1.0) == "jit"       # nothing missed
    assert choose_backup(1, 1, 3.0, 3.0, 1.0, 0.01, 0.002) == "jit"     # cheap JIT, big gain
    assert choose_backup(1, 1, 3.0, 3.0, 1.0, 0.01, 0.05) == "fast"     # JIT costs 5 verifies
    # one miss in a batch of b: JIT stalls all b rows, so fast wins above some b* (Theorem 17)
    picks = [choose_backup(b, 1, 3.0, 3.0, 1.0, 0.01, 0.004) for b in range(1, 33)]
    b_star = picks.index("fast")
    assert 1 < b_star and all(p == "jit" for p in picks[:b_star]) and all(p == "fast" for p in picks[b_star:])
    with pytest.raises(ValueError):
        choose_backup(2, 3, 3.0, 3.0, 1.0, 0.01, 0.004)


# --- Saguaro ---------------------------------------------------------------------------------
def test_saguaro_rescale_definition():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    out = saguaro_rescale(p, torch.tensor([1, 2, 0]), 0.5)
    want0 = torch.tensor([0.25, 0.3, 0.2]) / 0.75
    want1 = torch.tensor([0.1, 0.3, 0.15]) / 0.55
    assert torch.allclose(out[0], want0) and torch.allclose(out[1], want1) and torch.equal(out[2], p[2])
    assert torch.allclose(out.sum(-1), torch.ones(3))
    assert torch.equal(saguaro_rescale(p, torch.tensor([1, 1, 1]), 1.0), p)
    for c in (0.0, 1.5):
        with pytest.raises(ValueError):
            saguaro_rescale(p, torch.tensor([1, 1, 1]), c)


def test_rejection_sampling_with_the_rescaled_q_is_exact():
    """Drafts sampled from the Saguaro-rescaled q and verified against that q give p exactly;
    verifying against the unrescaled q (the bug to avoid) does not."""
    g = torch.Generator().manual_seed(0)
    V, N = 6, 60000
    p = torch.tensor([0.05, 0.4, 0.1, 0.25, 0.15, 0.05])
    q0 = torch.tensor([0.3, 0.3, 0.05, 0.05, 0.2, 0.1])
    q = saguaro_rescale(q0[None], torch.tensor([3]), 0.25)[0]
    d = torch.multinomial(q, N, replacement=True, generator=g)
    u = torch.rand(N, 2, generator=g)
    P = p.expand(N, 2, V)
    for q_used, exact in ((q, True), (q0, False)):   # first committed token: d if accepted, else t*
        acc, tok = verify(P, d[:, None], q_used.expand(N, 1, V), torch.ones(N, dtype=torch.long), u[:, :1], u[:, 1])
        first = torch.where(acc == 1, d, tok)
        counts = torch.bincount(first, minlength=V).double().numpy()
        pv = stats.chisquare(counts, p.double().numpy() * N).pvalue
        assert (pv > 1e-4) if exact else (pv < 1e-12), (exact, pv)


# --- speculation cache -----------------------------------------------------------------------
def test_lookup():
    keys = np.array([[[0, 5], [0, 7], [1, 5], [-99, -99]],
                     [[-2, 3], [-2, 4], [-99, -99], [-99, -99]]])
    assert lookup(keys, np.array([[1, 5], [-2, 4]])).tolist() == [2, 1]
    assert lookup(keys, np.array([[2, 5], [0, 3]])).tolist() == [-1, -1]
    assert lookup(np.zeros((2, 0, 2), np.int64), np.array([[0, 1], [0, 1]])).tolist() == [-1, -1]
    with pytest.raises(ValueError):
        lookup(keys[0], np.array([0, 5]))


def test_speculation_cache_answers_only_its_round():
    c = SpeculationCache()
    keys = np.array([[0, 11], [1, 12], [2, 13]])
    toks = np.arange(9).reshape(3, 3)
    c.put(7, CacheEntry(keys, toks, None, built_len=20))
    assert expected_len(20, 1) == 22 and expected_len(20, -2) == 21
    got = c.get([7], [1], [12], [22], [3])[0]
    assert got is not None and got.index == 1 and got.entry.tokens[1].tolist() == [3, 4, 5]
    assert c.get([7], [1], [12], [23], [3]) == [None]            # wrong round (length)
    assert c.get([7], [1], [13], [22], [3]) == [None]            # t* not forked
    assert c.get([7], [1], [12], [22], [4]) == [None]            # wants more tokens than cached
    assert c.get([8], [1], [12], [22], [3]) == [None]            # unknown sequence
    c.drop(7)
    assert c.get([7], [1], [12], [22], [3]) == [None]


# --- tree layout -----------------------------------------------------------------------------
def test_fork_excludes_the_drafted_token():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 9.0, 8.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    ranked = ranked_candidates(logits, torch.tensor([0, 2, -1]), 3).tolist()
    assert ranked == [[1, 2, 3], [1, 0, 3], [3, 2, 1]]
    assert fork(ranked, [2, 0, 1]) == ([0, 0, 2], [1, 2, 3])


def test_fork_layout_matches_fork_and_branch_positions():
    """fork_layout gives, on the host, the same branches as fork() reads from the candidates; each
    branch at depth j shares L + j tokens and stores its step-s token at L + j + s."""
    ranked = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]])      # 2 sequences' glue rows
    fan_a, fan_b = [2, 0, 1], [3]
    da, ia = fork_layout(fan_a, 0, 3)
    db, ib = fork_layout(fan_b, 3, 3)
    assert da.tolist() == [0, 0, 2] and db.tolist() == [0, 0, 0]
    assert ranked.view(-1)[torch.from_numpy(ia)].tolist() == fork(ranked[:3].tolist(), fan_a)[1] == [1, 2, 7]
    assert ranked.view(-1)[torch.from_numpy(ib)].tolist() == [10, 11, 12]
    L = 10
    pos = branch_positions(L + da, 2)
    assert pos.tolist() == [[10, 10, 12], [11, 11, 13]]
    tables = [[5, 6], [7, 8], [9, 3]]
    slots = branch_slots(tables, pos, block_size=8)
    assert slots.tolist() == [[6 * 8 + 2, 8 * 8 + 2, 3 * 8 + 4], [6 * 8 + 3, 8 * 8 + 3, 3 * 8 + 5]]
    with pytest.raises(ValueError):
        fork_layout([4], 0, 3)                                               # wider than the candidates


# --- messages --------------------------------------------------------------------------------
def test_messages_roundtrip():
    msgs = [
        Config(4, True, [3] * 5, [3] * 5, [15, 0, 0, 0, 0], False, 0.25, "auto", 320, 16, 512, 7),
        Config(2, False, [1, 1, 1], [1, 1, 1], [3, 0, 0], True, None, "jit", 12, 1, 64, 0),
        Hello(320, 512, 4096, 123),
        Prefill([3, 9], [[1, 2, 3], [4]], [4, 2], [0.0, 0.75], [0, 5], [1.0, 0.875]),
        Speculate([3, 9], [-2, 1], [5, 6], [4, 7], [4, 0], [[5], [2, 3, 6]], [0.0, 0.75], [0, 5], [1.0, 0.875], 1234),
        Free([1, 2, 3]),
        Exit(),
    ]
    for m in msgs:
        ints, floats = m.encode()
        assert ints.dtype == np.int64 and floats is None
        back = decode(m.command, ints)
        assert back == m, m
    reply = SpeculateReply(np.array([1, 2]), np.array([[1, 2, 3], [4, 5, 6]]), torch.rand(1, 3, 5), 77)
    ints, floats = reply.encode()
    back = decode(Command.SPECULATE_REPLY, ints, floats)
    assert back.tokens.tolist() == reply.tokens.tolist() and back.status.tolist() == [1, 2]
    assert back.build_us == 77 and torch.equal(back.probs.view(1, 3, 5), reply.probs)
