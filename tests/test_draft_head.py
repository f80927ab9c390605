"""A draft whose LM head covers part of the vocabulary (models/draft_head.py) stays exact:
greedy output equals AR, sampled output follows the target's distribution, and it never
proposes a token outside its head."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from test_distribution import N, P_FAIL, PROMPT, chi2_pvalue, exact_marginals
from tiny import PROMPTS
from specdec import LLM, SamplingParams
from specdec.cli import main
from specdec.models.draft_head import HEAD_FILE, frequent_tokens, load_head_tokens, save_head_tokens
from specdec.models.loader import load_model


def with_head(src, dst, ids):
    shutil.copytree(src, dst)
    save_head_tokens(dst, torch.tensor(ids))
    return dst


def test_loader_keeps_only_the_head_rows(tiny_llama, tmp_path):
    ids = [0, 5, 17, 300]
    folder = with_head(tiny_llama, tmp_path / "d", ids)
    full = load_model(str(tiny_llama), torch.device("cpu"), "float32").module
    part = load_model(str(folder), torch.device("cpu"), "float32").module
    assert part.lm_head.weight.shape[0] == 4 and torch.equal(part.lm_head.weight, full.lm_head.weight[ids])
    assert part.embed.weight.shape == full.embed.weight.shape                  # inputs still see every token
    h = torch.randn(3, full.arch.hidden_size)
    logits = torch.full((3, full.arch.vocab_size), float("-inf"))
    logits[:, ids] = full.lm_head(h)[:, ids]
    from specdec.models.draft_head import full_vocab_logits
    assert torch.equal(full_vocab_logits(part.lm_head(h), part.head_ids, full.arch.vocab_size), logits)


def test_bad_head_file_is_refused(tiny_llama, tmp_path):
    folder = with_head(tiny_llama, tmp_path / "d", [1, 2, 2])
    with pytest.raises(ValueError, match="distinct ids"):
        load_head_tokens(folder, 320)
    save_head_tokens(folder, torch.tensor([1, 999]))
    with pytest.raises(ValueError, match=r"\[0, 320\)"):
        load_model(str(folder), torch.device("cpu"), "float32")


def test_partial_head_draft_is_greedy_exact(tiny_llama, tmp_path):
    """Draft = the target itself with half its head: every draft from the head is accepted,
    every token outside it ends the round; the output is AR's."""
    keep = list(range(0, 320, 2))
    folder = with_head(tiny_llama, tmp_path / "d", keep)
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    ar = [o.token_ids for o in LLM(str(tiny_llama), mode="ar").generate(PROMPTS, params)]
    llm = LLM(str(tiny_llama), draft=str(folder), mode="sync", k=3)
    outs = llm.generate(PROMPTS, params)
    assert [o.token_ids for o in outs] == ar
    written = [t for o in ar for t in o]
    assert 0 < sum(t % 2 == 0 for t in written) < len(written)           # both kinds of token occur
    assert 0 < llm.metrics.accepted < llm.metrics.drafted


def test_partial_head_sampling_follows_target_distribution(small_vocab_pair, tmp_path):
    """A draft over 6 of the 12 tokens (q = 0 elsewhere): the residual rule must still give the
    target's distribution, including the tokens the draft can never propose."""
    target, draft = small_vocab_pair
    folder = with_head(draft, tmp_path / "d", [0, 2, 3, 5, 8, 10])
    params = SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True)
    llm = LLM(str(target), draft=str(folder), mode="sync", k=2, max_batch_size=64, seed=321)
    outs = llm.generate([PROMPT] * N, params)
    toks = np.array([o.token_ids[:3] for o in outs])
    drafted = sum(o.stats["drafted"] for o in outs)
    assert 0.05 < sum(o.stats["accepted"] for o in outs) / drafted < 0.95
    for i, pi in enumerate(exact_marginals(target, params)):
        counts = np.bincount(toks[:, i], minlength=len(pi)).astype(float)
        assert counts[[1, 4, 6, 7, 9, 11]].sum() > 0                        # tokens only the residual can give
        assert chi2_pvalue(counts, pi) > P_FAIL, f"token {i + 1} differs from the target's distribution"


def test_frequent_tokens_counts_completions_only():
    seqs = [[9, 9, 9, 1, 1, 2], [9, 9, 3, 1, 4]]
    ids, coverage = frequent_tokens(seqs, [3, 2], 2, 10, always=[7])
    assert ids.tolist() == [1, 2, 7]             # 1 (x3), then 2/3/4 tie (x1): the lowest id; EOS-like 7 always
    assert coverage == pytest.approx(4 / 6)


def test_distill_exports_a_partial_head(tiny_llama, tmp_path, capsys):
    out = tmp_path / "draft"
    assert main(["distill", "--target", str(tiny_llama), "--out", str(out), "--layers", "1", "--batch", "2",
                 "--seq-len", "64", "--num-prompts", "3", "--samples", "1", "--steps", "2",
                 "--head-vocab", "40"]) == 0
    assert "most frequent tokens" in capsys.readouterr().out
    ids = load_head_tokens(out, 320)
    assert ids is not None and 40 <= len(ids) <= 41
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    ar = [o.token_ids for o in LLM(str(tiny_llama), mode="ar").generate(PROMPTS[:3], params)]
    assert [o.token_ids for o in LLM(str(tiny_llama), draft=str(out), mode="sync", k=3).generate(PROMPTS[:3], params)] == ar
    assert (out / HEAD_FILE).exists()
