"""Unit tests of the pure verification and sampling functions."""
import math

import pytest
import torch

from specdec.layers.sampling import probs_from_logits, sample_from_probs
from specdec.spec.verify import greedy_accept_length, verify


def onehot(idx, V):
    return torch.nn.functional.one_hot(torch.tensor(idx), V).float()


def test_greedy_rule_accepts_matching_prefix_and_returns_argmax():
    V = 6
    # target argmax chain: 1, 2, 3, 4 ; drafts 1, 2, 5 -> accept 2, recovery = argmax at row 2 = 3
    p = torch.stack([onehot([1, 2, 3, 4], V)])
    d = torch.tensor([[1, 2, 5]])
    acc, rec = verify(p, d, None, torch.tensor([3]), torch.rand(1, 3), torch.rand(1))
    assert acc.tolist() == [2] and rec.tolist() == [3]
    # all accepted -> bonus from the last row
    acc, rec = verify(p, torch.tensor([[1, 2, 3]]), None, torch.tensor([3]), torch.rand(1, 3), torch.rand(1))
    assert acc.tolist() == [3] and rec.tolist() == [4]
    assert greedy_accept_length(torch.tensor([[1, 2, 5]]), torch.tensor([[1, 2, 3, 4]]), torch.tensor([3])).tolist() == [2]


def test_num_draft_limits_acceptance_and_takes_bonus_at_that_row():
    V = 5
    p = torch.stack([onehot([1, 2, 3], V)])
    d = torch.tensor([[1, 2]])
    acc, rec = verify(p, d, None, torch.tensor([1]), torch.rand(1, 2), torch.rand(1))
    assert acc.tolist() == [1] and rec.tolist() == [2]     # bonus from row 1, not a residual
    acc, rec = verify(p, d, None, torch.tensor([0]), torch.rand(1, 2), torch.rand(1))
    assert acc.tolist() == [0] and rec.tolist() == [1]     # K = 0: plain sample from p_0


def test_ratio_rule_thresholds():
    # p(d) = 0.3, q(d) = 0.6 -> accept iff u < 0.5
    p = torch.tensor([[[0.3, 0.7, 0.0], [0.2, 0.2, 0.6]]])
    q = torch.tensor([[[0.6, 0.4, 0.0]]])
    d = torch.tensor([[0]])
    for u, want in [(0.49, 1), (0.51, 0)]:
        acc, rec = verify(p, d, q, torch.tensor([1]), torch.tensor([[u]]), torch.tensor([0.5]))
        assert acc.item() == want
    # rejected: residual max(0, p - q) = [0, 0.3, 0] -> always token 1
    acc, rec = verify(p, d, q, torch.tensor([1]), torch.tensor([[0.9]]), torch.tensor([0.99]))
    assert acc.item() == 0 and rec.item() == 1


def test_residual_excludes_rejected_token_for_one_hot_drafts():
    p = torch.tensor([[[0.5, 0.25, 0.25], [1.0, 0, 0]]])
    d = torch.tensor([[0]])
    draws = []
    for u in torch.linspace(0.01, 0.99, 50):
        acc, rec = verify(p, d, None, torch.tensor([1]), torch.tensor([[0.99]]), u[None])
        assert acc.item() == 0
        draws.append(rec.item())
    assert set(draws) == {1, 2}


def test_verify_rejects_bad_shapes():
    with pytest.raises(ValueError):
        verify(torch.rand(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), None, torch.tensor([1, 1]), torch.rand(2, 2), torch.rand(2))
    with pytest.raises(ValueError):
        verify(torch.rand(1, 3, 4), torch.zeros(1, 2, dtype=torch.long), None, torch.tensor([3]), torch.rand(1, 2), torch.rand(1))


def test_single_step_rejection_sampling_is_exact():
    """Exact marginal: P(out = x) = min(p, q) + (1 - sum min(p, q)) * residual(x) = p(x)."""
    torch.manual_seed(0)
    V = 7
    p = torch.softmax(torch.randn(V) * 2, -1)
    q = torch.softmax(torch.randn(V) * 2, -1)
    N = 200_000
    d = torch.multinomial(q, N, replacement=True)
    P = p[None, None].expand(N, 2, V).clone()
    Q = q[None, None].expand(N, 1, V).clone()
    acc, rec = verify(P, d[:, None], Q, torch.ones(N, dtype=torch.long), torch.rand(N, 1), torch.rand(N))
    out = torch.where(acc == 1, d, rec)
    freq = torch.bincount(out, minlength=V).float() / N
    assert torch.allclose(freq, p, atol=4 * math.sqrt(0.25 / N))
    # a wrong rule (always accept) would give q, which this p is far from
    assert (q - p).abs().max() > 0.05


def test_probs_top_k_top_p_and_greedy():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 2.0]])
    probs = probs_from_logits(logits, torch.tensor([1.0, 1.0, 0.0]), torch.tensor([2, 0, 0]), torch.tensor([1.0, 0.7, 1.0]))
    full = torch.softmax(logits[0], -1)
    # top-k 2: only the two largest, renormalised
    assert torch.allclose(probs[0, :2], full[:2] / full[:2].sum()) and probs[0, 2:].sum() == 0
    # top-p 0.7: 0.644 < 0.7 so the second token (crossing 0.7) is kept, the rest dropped
    assert probs[1, :2].sum().item() == pytest.approx(1.0) and probs[1, 2:].sum() == 0
    assert probs[2].tolist() == [0.0, 1.0, 0.0, 0.0]
    # temperature sharpens
    t = probs_from_logits(logits[:1], torch.tensor([0.5]), torch.tensor([0]), torch.tensor([1.0]))
    assert torch.allclose(t[0], torch.softmax(logits[0] / 0.5, -1))


def test_sample_from_probs_inverse_cdf():
    p = torch.tensor([[0.0, 0.5, 0.0, 0.5]] * 4)
    u = torch.tensor([0.0, 0.49, 0.5, 0.999999])
    assert sample_from_probs(p, u).tolist() == [1, 1, 3, 3]
