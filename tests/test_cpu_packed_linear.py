"""CPU linears with oneDNN-packed weights (layers/cpu_linear.py): the same products as F.linear, never a
stale packed copy, autograd untouched, and the runner packs a model's linears once."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specdec import LLM, SamplingParams
from specdec.layers import cpu_linear
from specdec.layers.cpu_linear import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="this torch build has no oneDNN")


def packed(in_f=96, out_f=160, bias=True) -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(in_f, out_f, bias=bias)
    assert pack_linears(lin) == 1 and type(lin) is PackedLinear
    return lin


@pytest.mark.parametrize("rows", [1, 3, 48])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_product_matches_f_linear(rows, bias):
    lin = packed(bias=bias)
    x = torch.randn(rows, 96)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        assert lin(x.view(rows, 1, 96)).shape == (rows, 1, 160)


def test_weight_written_in_place_or_replaced_is_packed_again():
    lin = packed()
    x = torch.randn(3, 96)
    with torch.inference_mode():
        lin(x)
    with torch.no_grad():
        lin.weight.mul_(2)                                    # in place: the version counter moves
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
    lin.weight = nn.Parameter(torch.randn(160, 96))           # replaced (as tied weights are, at load)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)


def test_autograd_runs_f_linear():
    lin = packed()
    x = torch.randn(3, 96, requires_grad=True)
    lin(x).sum().backward()
    assert lin.weight.grad is not None and x.grad is not None


def test_packing_keeps_parameters_and_is_idempotent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    assert pack_linears(model) == 2
    assert pack_linears(model) == 0                           # a shared or already packed layer is left alone
    assert [id(p) for p in model.parameters()] == params
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_runner_packs_the_target_and_greedy_output_is_unchanged(tiny_llama):
    """The engine on the CPU runs packed linears; its greedy tokens equal those of the same model with
    plain F.linear layers (tiny random model, float32)."""
    prompts = [[1, 5, 9, 13, 2], [3, 4, 5]]
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    llm = LLM(str(tiny_llama), mode="ar", device="cpu", dtype="float32")
    mods = [m for m in llm.engine.runner.model.modules() if isinstance(m, nn.Linear)]
    assert mods and all(type(m) is PackedLinear for m in mods)
    got = [o.token_ids for o in llm.generate(prompts, params)]
    for m in mods:
        m.__class__ = nn.Linear
    assert [o.token_ids for o in llm.generate(prompts, params)] == got


def test_a_model_over_the_memory_budget_keeps_plain_linears():
    """The packed copies double the linears' weights: over the budget nothing is packed (and F.linear runs)."""
    from torch import nn

    from specdec.layers import cpu_linear
    if not cpu_linear.available():
        import pytest
        pytest.skip("this torch has no oneDNN")
    m = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 16))
    assert cpu_linear.pack_linears(m, budget=(64 * 32 + 32 * 16) * 4 - 1) == 0
    assert all(type(x) is nn.Linear for x in m)
    assert cpu_linear.pack_linears(m, budget=(64 * 32 + 32 * 16) * 4) == 2
    assert all(type(x) is cpu_linear.PackedLinear for x in m)
    assert cpu_linear.memory_budget() > 0
