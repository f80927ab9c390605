"""The build rule (when a speculation tree pays) and the SIMULATED verifier, as pure functions."""
import numpy as np
import pytest
import torch

from specdec.spec.adaptive import EXPLORE_ROUNDS, BuildRule, tree_pays
from specdec.spec.simulate import SimulatedVerifier, simulated_accepts


def test_tree_pays_compares_tokens_per_second():
    # every row hits: a tree round (8 ms) beats a sync round (11.5 ms) with the same tokens
    assert tree_pays(1.0, 1, 11.5, 8.0, 14.0, 3.0, 3.0, 3.0)
    # never hits: every tree round has a JIT on the critical path (14 ms > 11.5 ms)
    assert not tree_pays(0.0, 1, 11.5, 8.0, 14.0, 3.0, 3.0, 3.0)
    # b = 1, p = 0.8: 0.8 * 8 + 0.2 * 14 = 9.2 ms < 11.5 ms
    assert tree_pays(0.8, 1, 11.5, 8.0, 14.0, 3.0, 3.0, 3.0)
    # the same p at b = 16: all rows hit with p^16 = 2.8 %, so nearly every round pays the JIT
    assert not tree_pays(0.8, 16, 11.5, 8.0, 14.0, 3.0, 3.0, 3.0)
    # the fast backup: no JIT, but a missed row commits ~1 token
    assert tree_pays(0.9, 1, 11.5, 8.0, 8.0, 3.0, 1.0, 3.0)
    assert not tree_pays(0.3, 1, 11.5, 8.0, 8.0, 3.0, 1.0, 3.0)
    with pytest.raises(ValueError):
        tree_pays(1.5, 1, 1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        tree_pays(0.5, 1, 0, 1, 1, 1, 1, 1)


def _drive(rule, p_hit, t_sync, t_hit, t_miss, batch=1, rounds=400, seed=0):
    """Simulate rounds: the rule's choice decides the kind of the next round; returns the tree share."""
    rng = np.random.default_rng(seed)
    built_before, trees = True, 0
    for _ in range(rounds):
        build = rule.build(batch, 3.0, 3.0, 3.0)
        hits = [rng.random() < p_hit for _ in range(batch)]
        for h in hits:
            rule.observe_hit(h)                    # a tree's lookup, or the shadow fork's
        if build:
            trees += 1
            rule.observe_round(batch, "tree_hit" if all(hits) and built_before else "tree_miss",
                               t_hit if all(hits) and built_before else t_miss)
        elif not built_before:
            rule.observe_round(batch, "sync", t_sync)
        built_before = build
    return trees / rounds


def test_build_rule_explores_then_follows_the_measurements():
    rule = BuildRule()
    assert rule.build(1, 3, 3, 3)                  # nothing measured: the tree first
    assert _drive(BuildRule(), p_hit=0.0, t_sync=11.5, t_hit=8.0, t_miss=14.0) < 0.05
    assert _drive(BuildRule(), p_hit=0.95, t_sync=11.5, t_hit=8.0, t_miss=14.0) > 0.9
    # trees cost more than sync even when they hit (one GPU, draft as large as the target): sync
    assert _drive(BuildRule(), p_hit=1.0, t_sync=7.5, t_hit=8.5, t_miss=14.0) < 0.1
    rule = BuildRule()
    for _ in range(EXPLORE_ROUNDS):
        rule.observe_round(4, "tree_miss", 10.0)
    assert not rule.build(3, 3, 3, 3)              # batch 3 shares bucket 4: sync is explored next
    with pytest.raises(ValueError):
        rule.observe_round(1, "tree", 1.0)


def test_simulated_accepts_follow_the_truncated_geometric():
    rng = np.random.default_rng(0)
    A, K, n = 0.7, 4, 40000
    k = np.array(simulated_accepts(rng, A, [K] * n))
    want = np.array([A ** j * (1 - A) for j in range(K)] + [A ** K])
    got = np.bincount(k, minlength=K + 1) / n
    assert np.abs(got - want).max() < 0.01
    assert simulated_accepts(rng, 1.0, [3, 0, 2]) == [3, 0, 2]


class FakeDrafter:
    """Candidates at each depth: a host list for row 0, the device-style tuple for row 1."""

    def __init__(self):
        self.roots = torch.tensor([100, 101, 102, 200, 201, 202])     # depth 0: 100..102, depth 1: 200..202

    def sim_candidates(self, seq, depth):
        if seq == "host":
            return [10 + depth, 20 + depth]
        return self.roots, 3 * depth, 3, None


def test_simulated_verifier_picks_forked_recovery_tokens():
    sim = SimulatedVerifier(0.0, 1.0, 50000, seed=1)
    acc, rec = sim.outcome([2, 2], ["host", "dev"], FakeDrafter(), torch.device("cpu"))
    assert acc.tolist() == [0, 0]                                   # A = 0: nothing accepted
    assert rec[0].item() in (10, 20) and rec[1].item() in (100, 101, 102)
    sim = SimulatedVerifier(1.0, 0.0, 50000, seed=1)                # H = 0: random recovery tokens
    acc, rec = sim.outcome([2, 1], ["host", "dev"], FakeDrafter(), torch.device("cpu"))
    assert acc.tolist() == [2, 1] and sim.hits_drawn == 0
    sim = SimulatedVerifier(0.5, 0.8, 50000, seed=2)
    for _ in range(500):
        sim.outcome([1], ["dev"], FakeDrafter(), torch.device("cpu"))
    assert abs(sim.hits_placed / sim.rounds - 0.8) < 0.06


def test_rounds_that_captured_a_graph_are_not_round_times():
    """A tree kind first met at a new batch size pays its graph captures once; that round must not
    stand for the kind, or the rule would keep trees off for good (seen on an H200 at b=8)."""
    rule = BuildRule()
    for _ in range(EXPLORE_ROUNDS):
        rule.observe_round(8, "tree_hit", 0.120, one_time=True)       # captures: 120 ms rounds
    assert rule.build(8, 4.5, 4.5, 4.5)              # still unmeasured: the tree is explored again
    for _ in range(EXPLORE_ROUNDS):
        rule.observe_round(8, "tree_hit", 0.0105)
        rule.observe_round(8, "sync", 0.0135)
    rule.probe_left = 0
    for _ in range(20):
        rule.observe_hit(True)
    assert rule.build(8, 4.5, 4.5, 4.5)              # 10.5 ms tree rounds beat 13.5 ms sync rounds
    assert rule.counts[(8, "tree_hit")] == EXPLORE_ROUNDS


def test_rounds_with_a_capture_reach_neither_the_build_rule_nor_auto_k(tiny_llama, monkeypatch):
    """The engine (k_policy=auto) and the SSD core read graph_tools.captures() around each round; when it
    moves during every round, no round time may enter AutoK's step costs or the build rule's EMAs,
    while the rounds still happen and the output stays the target's."""
    import itertools

    import specdec.draft.core as core
    import specdec.engine.engine as engine
    from specdec import LLM, SamplingParams

    ticks = itertools.count()
    moving = lambda: next(ticks)                                  # noqa: E731  a capture in every round
    monkeypatch.setattr(engine, "captures", moving)
    monkeypatch.setattr(core, "captures", moving)
    prompts = [[5, 17, 33, 99], [42, 7]]
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    ar = [o.token_ids for o in LLM(str(tiny_llama), device="cpu").generate(prompts, params)]

    llm = LLM(str(tiny_llama), device="cpu", mode="sync", draft=str(tiny_llama), k=3, k_policy="auto")
    assert [o.token_ids for o in llm.generate(prompts, params)] == ar
    costs = llm.engine.auto_k._costs
    assert llm.engine.metrics.rounds > 0 and costs
    assert all(c.ar is None and c.draft_step is None and c.verify_k is None for c in costs.values())

    llm = LLM(str(tiny_llama), device="cpu", mode="async", draft=str(tiny_llama), k=3)
    assert [o.token_ids for o in llm.generate(prompts, params)] == ar
    rule = llm.engine.drafter.core.rule
    assert sum(rule.decisions.values()) > 0 and rule.times == {} and rule.counts == {}
