"""Sampled SSD output follows the target's distribution exactly (draft worker = a real process).

Setup (as in test_distribution.py): 12-token vocabulary, target T and a differently
distributed draft D, a fixed prompt, temperature 1. Token 1 comes from the prefill; tokens 2-4
come from speculative rounds served by the prefill tree, the round trees (cache hits) and the
backup (JIT, or uniform random tokens whose q is uniform). We compare their marginals with the
exact ones from T (enumeration over all contexts).

Test: Pearson chi-square per token position, cells with expected count < 5 merged; fail when
p < 1e-4 (stated threshold; 3 positions x 4 configurations). Power: the same samples tested
against D's marginals must fail hard, and a deliberately wrong rule (verifying the draft's
tokens against a q other than the one they were sampled from) must fail on the same sample
size. (A one-hot q is *not* such a rule: any proposal independent of the target's randomness
verified as if deterministic stays exact, like n-gram drafts; it only lowers acceptance.)
"""
import numpy as np
import pytest
import torch
from scipy import stats
from transformers import AutoModelForCausalLM

from specdec import LLM, SamplingParams
from specdec.layers.sampling import probs_from_logits
from specdec.draft import inprocess, remote

PROMPT = [3, 7, 1]
N = 2000
POSITIONS = 4
P_FAIL = 1e-4
PARAMS = SamplingParams(temperature=1.0, max_tokens=POSITIONS, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("one_thread")   # several processes share 2 cores


def exact_marginals(folder, n: int, prompt=PROMPT, temperature=1.0) -> list[np.ndarray]:
    """P(t_1) .. P(t_n) of the model at folder, by enumerating every context (V^(n-1) of them)."""
    m = AutoModelForCausalLM.from_pretrained(folder).eval()
    V = m.config.vocab_size
    joint = torch.ones(1, dtype=torch.float64)                 # P(context) for every context so far
    ctxs = [list(prompt)]
    out = []
    for _ in range(n):
        with torch.no_grad():
            logits = m(torch.tensor(ctxs)).logits[:, -1].float()
        t = torch.full((len(ctxs),), temperature)
        p = probs_from_logits(logits, t, torch.zeros(len(ctxs), dtype=torch.long), torch.ones(len(ctxs))).double()
        step = joint[:, None] * p                                # [contexts, V]
        out.append(step.sum(0).numpy())
        joint = step.reshape(-1)
        ctxs = [c + [v] for c in ctxs for v in range(V)]
    return out


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square, merging the smallest cells until each expects >= 5."""
    expected = probs * counts.sum()
    obs, exp, acc_o, acc_e = [], [], 0.0, 0.0
    for i in np.argsort(expected):
        acc_o += counts[i]
        acc_e += expected[i]
        if acc_e >= 5:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0:
        obs[-1] += acc_o
        exp[-1] += acc_e
    obs, exp = np.array(obs), np.array(exp)
    return 1.0 if len(obs) < 2 else stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.fixture(scope="module")
def marginals(small_vocab_pair):
    target, draft = small_vocab_pair
    return exact_marginals(target, POSITIONS), exact_marginals(draft, POSITIONS)


@pytest.fixture(scope="module", params=["in_process", "worker"])
def ssd(request, small_vocab_pair):
    """tree_policy "always": the hit rate of this pair is low, and the build rule would stop building
    trees; the point here is that hits (tree q), JIT and fast rows are all exact."""
    target, draft = small_vocab_pair
    llm = LLM(str(target), draft=str(draft), mode="async", k=2, max_batch_size=250, seed=123,
              draft_placement=request.param, tree_policy="always")
    yield llm
    llm.close()


def sample(llm, n: int = N) -> tuple[np.ndarray, dict]:
    m = llm.metrics
    before = {k: getattr(m, k) for k in ("cache_hits", "cache_lookups", "accepted", "drafted")}
    outs = llm.generate([PROMPT] * n, PARAMS)
    toks = np.array([o.token_ids for o in outs])
    assert toks.shape == (n, POSITIONS)
    d = {k: getattr(m, k) - v for k, v in before.items()}
    return toks, d


def pvalues(toks: np.ndarray, dists: list[np.ndarray]) -> list[float]:
    V = len(dists[0])
    return [chi2_pvalue(np.bincount(toks[:, i], minlength=V).astype(float), dists[i]) for i in range(1, POSITIONS)]


@pytest.mark.parametrize("sampler_x", [None, 0.25])
@pytest.mark.parametrize("backup", ["jit", "fast"])
def test_ssd_sampling_follows_target_distribution(ssd, marginals, backup, sampler_x):
    ssd.engine.update_spec(backup=backup, sampler_x=sampler_x)
    toks, d = sample(ssd)
    p, q = marginals
    pv = pvalues(toks, p)
    assert min(pv) > P_FAIL, f"tokens 2..{POSITIONS}: p-values {pv} (distribution differs from the target's)"
    assert 0.02 < d["cache_hits"] / d["cache_lookups"] < 0.98, "both the cache and the backup must be exercised"
    assert 0.05 < d["accepted"] / d["drafted"] < 0.95, "acceptance and rejection must both happen"
    assert min(pvalues(toks, q)) < 1e-9                        # power: the draft's own marginals are rejected


def test_saguaro_raises_the_hit_rate(ssd):
    rates = {}
    for x in (None, 0.25):
        ssd.engine.update_spec(backup="jit", sampler_x=x)
        _, d = sample(ssd, N // 2)
        rates[x] = d["cache_hits"] / d["cache_lookups"]
    assert rates[0.25] > rates[None], rates


def test_a_wrong_rule_fails(ssd, marginals, monkeypatch):
    """Control: verify cached/JIT tokens against a uniform q instead of the q they were sampled
    from (over-accepting the draft); the test must see the bias at this sample size."""
    ssd.engine.update_spec(backup="jit", sampler_x=None)
    real_q = remote.proposal_q

    def wrong_q(*args):
        q = real_q(*args)
        return torch.full_like(q, 1.0 / q.shape[-1])

    monkeypatch.setattr(remote, "proposal_q", wrong_q)
    monkeypatch.setattr(inprocess, "proposal_q", wrong_q)
    toks, _ = sample(ssd)
    pv = pvalues(toks, marginals[0])
    assert min(pv) < P_FAIL, pv


@pytest.mark.parametrize("sampler_x", [None, 0.25])
def test_rounds_drafted_like_sync_on_the_device_follow_target_distribution(small_vocab_pair, marginals, monkeypatch,
                                                                          sampler_x):
    """The build rule held at "no tree": the in-process draft drafts like sync, its tokens and q left on the
    device (draft/core.py DeviceRound) on all rounds but the shadow-fork ones. Still the target's
    distribution, with and without Saguaro's rescale of q."""
    from specdec.draft import core
    monkeypatch.setattr(core.DraftCore, "_build_now", lambda self, batch: False)
    target, draft = small_vocab_pair
    llm = LLM(str(target), draft=str(draft), mode="async", k=2, max_batch_size=250, seed=7,
              draft_placement="in_process", tree_policy="auto", backup="jit", sampler_x=sampler_x)
    try:
        toks, d = sample(llm)
        dev = llm.engine.drafter.core.device_rounds
    finally:
        llm.close()
    assert dev >= 8, (dev, d)        # most rounds (hits: only the first requests' prefill trees, built before the rule)
    assert 0.05 < d["accepted"] / d["drafted"] < 0.95
    p, q = marginals
    pv = pvalues(toks, p)
    assert min(pv) > P_FAIL, f"tokens 2..{POSITIONS}: p-values {pv} (distribution differs from the target's)"
    assert min(pvalues(toks, q)) < 1e-9
