"""layers/fused.py: a compiled elementwise op that fails at a new shape falls back to eager instead of failing
the request (torch's recompile limit was hit on an H100 by a process that built engines of two widths and two
dtypes), and enable_compile raises that limit."""
import pytest
import torch

from specdec.layers import fused


def test_failing_compiled_op_falls_back_to_eager_once(caplog):
    calls = {"compiled": 0}

    def compiled(x, w, eps):
        calls["compiled"] += 1
        raise RuntimeError("Hard failure due to fullgraph=True")

    op = fused._falls_back(compiled, fused.eager_rms_norm)
    x, w = torch.randn(3, 8), torch.ones(8)
    with caplog.at_level("WARNING"):
        got = op(x, w, 1e-5)
        again = op(x, w, 1e-5)
    assert torch.equal(got, fused.eager_rms_norm(x, w, 1e-5)) and torch.equal(again, got)
    assert calls["compiled"] == 1                       # not retried after the first failure
    assert "runs eagerly from now on" in caplog.text and op.__name__ == "rms_norm"


def test_eager_errors_still_raise():
    def compiled(x, w, eps):
        raise RuntimeError("compile failed")
    op = fused._falls_back(compiled, fused.eager_rms_norm)
    with pytest.raises(RuntimeError):                   # a real shape error is not swallowed by the fallback
        op(torch.randn(3, 8), torch.ones(5), 1e-5)


def test_recompile_limit_raised():
    import torch._dynamo
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    old = getattr(torch._dynamo.config, name)
    try:
        setattr(torch._dynamo.config, name, 8)
        fused._raise_recompile_limit()
        assert getattr(torch._dynamo.config, name) == fused.RECOMPILE_LIMIT
    finally:
        setattr(torch._dynamo.config, name, old)
