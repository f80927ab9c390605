"""Sampled output of sync speculative decoding follows the target's distribution exactly.

Setup: a 12-token vocabulary, target T and a differently distributed draft D. For a fixed
prompt, token 1 comes from the prefill and tokens 2 and 3 from the first speculative round
(position 0 and 1 of the round: the accept/residual rule at two depths). We compare the
empirical distributions with the exact ones computed from T by enumeration.

Test: Pearson chi-square, cells with expected count < 5 merged; we fail when p < 1e-4
(stated threshold). Power check: the same samples tested against D's distribution (what a
rule that always accepts would produce) must fail hard, so the sample size is large enough
to catch a wrong rule.
"""
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from specdec import LLM, SamplingParams
from specdec.layers.sampling import probs_from_logits

PROMPT = [3, 7, 1]
N = 3000
P_FAIL = 1e-4


def exact_marginals(folder, params: SamplingParams, prompt=PROMPT):
    """Exact P(t1), P(t2), P(t3) of the model at folder under params' temperature/top-k/top-p."""
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(folder).eval()
    V = m.config.vocab_size
    t = torch.tensor([params.temperature]); k = torch.tensor([params.top_k]); p = torch.tensor([params.top_p])

    def dist(seqs):
        with torch.no_grad():
            logits = m(torch.tensor(seqs)).logits[:, -1].float()
        return probs_from_logits(logits, t.expand(len(seqs)), k.expand(len(seqs)), p.expand(len(seqs)))

    p1 = dist([prompt])[0]
    p2_given = dist([prompt + [a] for a in range(V)])                        # [V, V]
    pairs = list(itertools.product(range(V), range(V)))
    p3_given = dist([prompt + [a, b] for a, b in pairs]).view(V, V, V)        # [a, b, V]
    p2 = (p1[:, None] * p2_given).sum(0)
    joint12 = p1[:, None] * p2_given
    p3 = (joint12[:, :, None] * p3_given).sum((0, 1))
    return p1.double().numpy(), p2.double().numpy(), p3.double().numpy()


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    order = np.argsort(expected)
    obs, exp = [], []
    acc_o = acc_e = 0.0
    for i in order:                         # merge small cells, smallest first
        acc_o += counts[i]; acc_e += expected[i]
        if acc_e >= 5:
            obs.append(acc_o); exp.append(acc_e); acc_o = acc_e = 0.0
    if acc_e > 0:
        obs[-1] += acc_o; exp[-1] += acc_e
    obs, exp = np.array(obs), np.array(exp)
    if len(obs) < 2:
        return 1.0
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def sample_tokens(target, draft, params, k=2, seed=123):
    llm = LLM(str(target), draft=str(draft) if draft != "ngram" else "ngram", mode="sync", k=k, max_batch_size=64, seed=seed)
    outs = llm.generate([PROMPT] * N, params)
    toks = np.array([o.token_ids[:3] for o in outs])
    assert toks.shape == (N, 3)
    drafted = sum(o.stats["drafted"] for o in outs)
    accepted = sum(o.stats["accepted"] for o in outs)
    return toks, accepted / max(drafted, 1)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True),
    SamplingParams(temperature=0.7, top_k=6, top_p=0.9, max_tokens=3, ignore_eos=True),
], ids=["t1", "t0.7-topk6-topp0.9"])
def test_sync_sampling_follows_target_distribution(params, small_vocab_pair):
    target, draft = small_vocab_pair
    p1, p2, p3 = exact_marginals(target, params)
    q1, q2, q3 = exact_marginals(draft, params)
    toks, acc = sample_tokens(target, draft, params)
    assert 0.05 < acc < 0.95, "the draft must be partly accepted for the test to exercise both branches"
    V = len(p1)
    for i, pi in enumerate((p1, p2, p3)):
        counts = np.bincount(toks[:, i], minlength=V).astype(float)
        pv = chi2_pvalue(counts, pi)
        assert pv > P_FAIL, f"token {i + 1}: p={pv:.2e} (distribution differs from the target's)"
    # power: the draft's own distribution (what 'always accept' would give) is rejected
    counts2 = np.bincount(toks[:, 1], minlength=V).astype(float)
    counts3 = np.bincount(toks[:, 2], minlength=V).astype(float)
    assert min(chi2_pvalue(counts2, q2), chi2_pvalue(counts3, q3)) < 1e-9


def test_overlapped_sampled_rounds_follow_target_distribution(small_vocab_pair, moved):
    """Overlapped rounds (engine/spec_overlap.py, graphs "padded"), K=1: token 2 comes from the first round (its
    verify's rejection sampling on the device after the graph), token 3 from that round's bonus or from the
    round launched from its outcome on the device (draft loop sampled from device-fed tokens)."""
    target, draft = small_vocab_pair
    params = SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True)
    llm = LLM(str(target), draft=str(draft), mode="sync", k=1, max_batch_size=64, seed=5, graphs="padded")
    outs = llm.generate([PROMPT] * N, params)
    toks = np.array([o.token_ids[:3] for o in outs])
    assert moved[0] > 0 and 0.05 < llm.metrics.accepted / llm.metrics.drafted < 0.95
    q1, q2, q3 = exact_marginals(draft, params)
    for i, pi in enumerate(exact_marginals(target, params)):
        assert chi2_pvalue(np.bincount(toks[:, i], minlength=len(pi)).astype(float), pi) > P_FAIL, i
    assert chi2_pvalue(np.bincount(toks[:, 1], minlength=len(q2)).astype(float), q2) < 1e-9     # power


def test_ngram_drafts_at_temperature_are_exact(small_vocab_pair):
    """One-hot (deterministic) drafts: accept with p(d), residual = p without d."""
    target, _ = small_vocab_pair
    params = SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True)
    prompt = [0, 5, 1, 6, 2, 7, 3, 8, 4, 9, 10, 11]   # every token occurs: lookup always proposes
    llm = LLM(str(target), draft="ngram", mode="sync", k=2, max_batch_size=64, seed=7)
    outs = llm.generate([prompt] * N, params)
    assert sum(o.stats["drafted"] for o in outs) >= N      # (k is capped at max_tokens - 2 = 1 here)
    p1, p2, p3 = exact_marginals(target, params, prompt)
    toks = np.array([o.token_ids[:3] for o in outs])
    for i, pi in enumerate((p1, p2, p3)):
        assert chi2_pvalue(np.bincount(toks[:, i], minlength=len(pi)).astype(float), pi) > P_FAIL


def test_seeded_requests_are_reproducible(small_vocab_pair):
    target, draft = small_vocab_pair
    llm = LLM(str(target), draft=str(draft), mode="sync", k=3, max_batch_size=8)
    sp = SamplingParams(temperature=1.0, max_tokens=12, seed=42, ignore_eos=True)
    a = llm.generate([PROMPT], sp)[0].token_ids
    a2 = llm.generate([[5]], sp)[0].token_ids
    b = llm.generate([PROMPT, [1, 2], [5]], [sp, SamplingParams(temperature=1.0, max_tokens=12), sp])
    assert a == b[0].token_ids and a2 == b[2].token_ids
