"""spec/auto_k.py: the K decision (pure) and the estimator that feeds it."""
from collections import Counter
from types import SimpleNamespace

import pytest

from specdec.spec.auto_k import AutoK, batch_bucket, choose_k, expected_tokens, speedup


def test_expected_tokens_closed_form():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    a = 0.6
    assert expected_tokens(a, 3) == pytest.approx(1 + a + a ** 2 + a ** 3)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens(1.5, 2)


def test_speedup_formula_and_session5_numbers():
    # session 5 (H200, SmolLM2 + 4-layer draft): E = 1.62 at K = 4, c = 0.19 -> 0.93x without verify growth
    alpha = 0.365          # E(0.365, 4) ~ 1.56
    assert speedup(alpha, 4, 0.19) == pytest.approx(expected_tokens(alpha, 4) / (0.19 * 4 + 1))
    assert speedup(0.9, 0, 0.5) == 1.0                 # K = 0 is AR
    assert speedup(0.8, 4, 0.1, verify_growth=0.06) < speedup(0.8, 4, 0.1)


def test_choose_k_falls_back_to_ar_when_no_k_pays():
    assert choose_k(0.16, 0.19, 8) == 0                # the shipped draft on a GPU: never faster
    assert choose_k(0.3, 0.5, 8) == 0
    assert choose_k(0.0, 0.0, 4) == 0                  # speedup exactly 1: no gain, no speculation
    assert choose_k(0.99, 0.0, 6) == 6                 # free, perfect drafts: as many as allowed


def test_choose_k_picks_the_maximum_of_the_formula():
    for alpha in (0.5, 0.7, 0.8, 0.9):
        for c in (0.02, 0.05, 0.1, 0.2):
            for g in (0.0, 0.06):
                k = choose_k(alpha, c, 10, g)
                best = max(range(1, 11), key=lambda j: speedup(alpha, j, c, g))
                if speedup(alpha, best, c, g) >= 1.0:
                    assert k == best
                else:
                    assert k == 0
    # more expensive drafts -> shorter rounds
    assert choose_k(0.8, 0.02, 12) > choose_k(0.8, 0.2, 12) > 0


def test_choose_k_min_gain_and_bad_input():
    a, c = 0.4, 0.2                                    # a marginal draft
    s = max(speedup(a, k, c) for k in range(1, 9))
    assert 1.0 < s < 1.2
    assert choose_k(a, c, 8) > 0
    assert choose_k(a, c, 8, min_gain=s + 0.01) == 0
    with pytest.raises(ValueError, match="k_max"):
        choose_k(0.5, 0.1, 0)
    with pytest.raises(ValueError, match="c="):
        choose_k(0.5, -0.1, 4)


def test_batch_bucket():
    assert [batch_bucket(b) for b in (1, 2, 3, 4, 5, 9, 256)] == [1, 2, 4, 4, 8, 16, 256]


def _feed(est: AutoK, batch: int, rounds: int, ar_s: float, draft_step_s: float, alpha: float, growth: float = 0.05,
          outcome=None):
    """Drive the estimator like the engine would. Each speculative round of K drafts costs draft_step_s K and a
    verify of ar_s (1 + growth K); its (accepted, rejections) are ``outcome(K)``, by default in the ratio
    alpha : (1 - alpha) exactly."""
    ks = []
    for _ in range(rounds):
        k = est.next_k(batch)
        ks.append(k)
        if k == 0:
            est.observe(batch, 0, 0.0, ar_s)
            continue
        acc, rej = outcome(k) if outcome else (round(alpha / (1 - alpha) * 4 * batch), 4 * batch)
        est.observe(batch, k, draft_step_s * k, ar_s * (1 + growth * k), accepted=acc, rejections=rej)
    return ks


def test_autok_speculates_with_a_good_cheap_draft():
    est = AutoK(k_max=8)
    ks = _feed(est, 1, 200, ar_s=1e-3, draft_step_s=0.05e-3, alpha=0.8)
    assert est.alpha == pytest.approx(0.8, abs=0.02)
    c, g = est.costs(1)
    assert c == pytest.approx(0.05, rel=0.05) and g == pytest.approx(0.05, rel=0.05)
    assert ks[-1] == choose_k(0.8, 0.05, 8, 0.05) >= 4


def test_autok_falls_back_to_ar_and_probes():
    est = AutoK(k_max=4, probe_every=16)
    ks = _feed(est, 1, 300, ar_s=1e-3, draft_step_s=0.3e-3, alpha=0.2)
    tail = ks[100:]
    assert est.alpha == pytest.approx(0.2, abs=0.03)
    assert tail.count(0) >= len(tail) * 13 // 16      # AR, except a probe of two rounds in 16
    assert 0 < sum(1 for k in tail if k) <= 2 * (len(tail) // 16 + 1)


def test_autok_times_per_batch_bucket():
    est = AutoK(k_max=4)
    _feed(est, 1, 50, ar_s=1e-3, draft_step_s=0.05e-3, alpha=0.8)
    assert est.costs(1)[0] is not None
    assert est.costs(64)[0] is None                   # another bucket is measured on its own
    assert est.next_k(64) == 4                         # first: speculate to time the draft


def test_autok_reads_engine_metrics():
    m = SimpleNamespace(draft_time=0.0, decode_time=0.0, accepted=0, rounds=0, tokens_per_round_hist=Counter())
    est = AutoK(k_max=4)
    k = est.next_k(2, m)
    assert k == 4
    # one row took 4 (+1), one took 1; the round's wall time 1.6 ms, its draft 0.4 of it
    m.draft_time, m.decode_time, m.accepted, m.rounds = 0.4e-3, 1.6e-3, 5, 2
    m.tokens_per_round_hist.update({5: 1, 2: 1})
    est.after_step(m)
    assert est._acc == pytest.approx(est.alpha_decay ** 6 * 2.0 + 5)
    assert est._rej == pytest.approx(est.alpha_decay ** 6 * 2.0 + 1)
    assert est._costs[2].spec[4] == pytest.approx([1.6e-3, 7])   # the wall time is the round's cost
    assert est.next_k(2, m) == 0                       # AR next, to time a plain step
    m.decode_time += 1e-3
    est.after_step(m)
    c, g = est.costs(2)
    assert c == pytest.approx(0.1e-3 / 1e-3) and g == pytest.approx((1.2 - 1) / 4)
    est.next_k(2, m)
    m.decode_time = 0.0                                 # reset (bench): the round is skipped, not misread
    est.after_step(m)
    with pytest.raises(ValueError, match="k_max"):
        AutoK(k_max=0)


def test_engine_with_k_policy_auto(tiny_llama):
    """k_policy="auto": the engine asks AutoK for K before each decode round and feeds it the round's
    measurements after. Greedy output stays the AR output, and with a useless draft (self:1 of a random
    model) it ends up decoding plainly, probing now and then."""
    from tiny import PROMPTS

    from specdec import LLM, SamplingParams
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    ref = [o.token_ids for o in LLM(str(tiny_llama), mode="ar").generate(PROMPTS[:2], params)]
    llm = LLM(str(tiny_llama), draft="self:1", mode="sync", k=4, k_policy="auto")
    est = llm.engine.auto_k
    est.probe_every = 8                                # probe often: the test decodes ~30 rounds
    chosen = []
    next_k = est.next_k
    est.next_k = lambda batch, metrics=None: chosen.append(next_k(batch, metrics)) or chosen[-1]
    outs = llm.generate(PROMPTS[:2], params)
    assert [o.token_ids for o in outs] == ref
    assert est.costs(2)[0] is not None and est.alpha < 0.5
    tail = chosen[len(chosen) // 2:]
    assert tail.count(0) > len(tail) // 2 and any(tail)
    assert sum(o.stats["ar_steps"] for o in outs) > 0 and sum(o.stats["rounds"] for o in outs) > 0


def test_a_round_that_captured_a_graph_keeps_its_acceptance_not_its_times():
    est = AutoK(k_max=4)
    est.observe(1, 4, draft_s=0.004, verify_s=0.005, accepted=3, rejections=1)
    est.observe(1, 0, draft_s=0.0, verify_s=0.004)
    costs = est.costs(1)
    alpha = est.alpha
    est.observe(1, 4, draft_s=0.400, verify_s=0.300, accepted=4, rejections=0, timed=False)   # captures: 100x slower
    est.observe(1, 0, draft_s=0.0, verify_s=0.200, timed=False)
    assert est.costs(1) == costs                      # the one-time cost left the step-cost estimates alone
    assert est.alpha > alpha                          # its accepted tokens still count


def _feed_few_drafting_rows(est: AutoK, rounds: int, batch: int = 8, drafting: int = 2, alpha: float = 0.7):
    """Rounds where only ``drafting`` of the batch's rows draft (the others asked for num_draft_tokens=0):
    the model's E(alpha, K) per row holds for those rows only, so it expects a gain (about 1.3x at K = 2)
    while such a round commits about 10 tokens for 8 rows in 1.6 AR steps' time (about 0.8x AR)."""
    return _feed(est, batch, rounds, 1e-3, 0.2e-3, alpha, growth=0.1,
                 outcome=lambda k: (round(drafting * sum(alpha ** i for i in range(1, k + 1))), drafting // 2))


def test_autok_decodes_plainly_where_speculation_measurably_loses():
    ks = _feed_few_drafting_rows(AutoK(k_max=4, probe_every=16), 400)[100:]
    assert sum(1 for k in ks if k) <= 2 * (len(ks) // 16 + 1)      # only the probes (two rounds each) speculate
    # control: without the measured guard the model alone keeps speculating (the bug this guards against)
    ks_model = _feed_few_drafting_rows(AutoK(k_max=4, probe_every=16, max_loss=0.999), 400)[100:]
    assert sum(1 for k in ks_model if k) > len(ks_model) // 2
    with pytest.raises(ValueError, match="max_loss"):
        AutoK(k_max=4, max_loss=1.0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rounds_after_plain_stretches_draft_in_one_loop_program(tiny_llama, tiny_llama_draft, mode):
    """After a stretch of plain steps (auto K chose 0) the draft has several committed tokens to catch up
    on. They are written by one forward first, so the round's K-step loop still runs as one program (a
    CUDA graph on GPUs; graphs "padded" here) from a 1-token catch-up, instead of capturing a loop graph per
    catch-up length or drafting step by step. Greedy output stays AR's."""
    from tiny import PROMPTS

    from specdec import LLM, SamplingParams
    from specdec.draft import loop
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    ref = [o.token_ids for o in LLM(str(tiny_llama), mode="ar").generate(PROMPTS[:2], params)]
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode=mode, k=3, k_policy="auto", graphs="padded")
    schedule = iter([3, 0, 0, 0, 0, 0] * 20)                      # a round, then five plain steps
    llm.engine.auto_k.next_k = lambda batch, metrics=None: next(schedule)
    lens = []
    shorten = loop.shorten_catch_up

    def spy(runner, catch_up, ks):
        lens.append(max(len(f.tokens) for f, k in zip(catch_up, ks) if k and not f.dummy))
        out = shorten(runner, catch_up, ks)
        assert max(len(f.tokens) for f in out) <= loop.LOOP_CATCH_UP
        return out

    loop.shorten_catch_up = spy
    from specdec.draft.model import ModelDrafter
    moved, propose_moved = [], ModelDrafter.propose_moved       # overlapped rounds (engine/spec_overlap.py):
    ModelDrafter.propose_moved = lambda self, *a, **kw: (moved.append(1), propose_moved(self, *a, **kw))[1]   # 2-token step 0
    try:
        outs = llm.generate(PROMPTS[:2], params)
        graph = (llm.engine.drafter.core.runner if mode == "async" else llm.engine.drafter.runner).graph
    finally:
        loop.shorten_catch_up = shorten
        ModelDrafter.propose_moved = propose_moved
        llm.close()
    assert [o.token_ids for o in outs] == ref
    assert max(lens) > loop.LOOP_CATCH_UP                          # long catch-ups happened ...
    assert graph.loops == len(lens) + len(moved)                   # ... and every loop ran as one program


def test_a_k_measured_as_a_loss_gives_way_to_the_next_best():
    est = AutoK(k_max=2)
    est.observe(1, 0, 0.0, 1e-3)                                            # a plain step: 1 ms
    est.observe(1, 2, 0.1e-3, 1.1e-3, accepted=8, rejections=2)             # K=2 pays: 1.2 ms for 9 tokens
    assert est.next_k(1) == 2
    est._costs[1].spec[2] = [10e-3, 1.0]                                    # measured: 10 ms per token at K=2
    assert est.measured_loss(1, 2) and not est.measured_loss(1, 1)
    assert est.next_k(1) == 1                                               # the model's next best, not AR


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_auto_k_plain_steps_run_overlapped_like_ar(tiny_llama, tiny_llama_draft, temperature):
    """Where auto K chooses 0, the step runs through AR's overlapped pipeline (engine/overlap.py), not a
    round with a host sync per step: the fallback is AR's own speed (on an H100 the synchronous plain steps
    were slower than AR's, so auto K measured AR as dearer than it is). Its time reaches AutoK as a plain
    step's; outputs stay AR's, greedy and seeded-sampled."""
    from tiny import PROMPTS

    from specdec import LLM, SamplingParams
    params = SamplingParams(max_tokens=40, ignore_eos=True, temperature=temperature, seed=5)
    ref = [o.token_ids for o in LLM(str(tiny_llama), mode="ar", graphs="padded").generate(PROMPTS[:2], params)]
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=3, k_policy="auto", graphs="padded")
    est, pipe = llm.engine.auto_k, llm.engine.pipeline
    schedule = iter([3] + [0] * 8 + [2] + [0] * 200)
    est.next_k = lambda batch, metrics=None: next(schedule)
    plain, advances = [], []
    observe_plain, advance = est.plain_step, pipe.advance
    est.plain_step = lambda batch, seconds, timed=True: (plain.append(timed), observe_plain(batch, seconds, timed))
    pipe.advance = lambda seqs: (advances.append(len(seqs)), advance(seqs))[1]
    try:
        outs = llm.generate(PROMPTS[:2], params)
    finally:
        llm.close()
    if temperature == 0.0:
        assert [o.token_ids for o in outs] == ref
    else:                                  # a seeded row draws the same tokens overlapped or not
        assert [len(o.token_ids) for o in outs] == [40, 40]
    assert len(advances) == len(plain) > 20                     # every plain step went through the pipeline
    assert plain.count(False) >= 2 and plain.count(True) > 15   # the first of each stretch is not a steady time
    assert est._costs[2].ar is not None                         # AR's time per step came from those steps
    assert sum(o.stats["rounds"] for o in outs) > 0
