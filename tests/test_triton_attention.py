"""The Triton paged-attention kernel equals a float64 reference (CPU: Triton's interpreter; GPU: real)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")      # (conftest.py sets it first, before any import)
ta = pytest.importorskip("specdec.layers.triton_attention")
if not ta.HAVE_TRITON:
    pytest.skip("triton is not installed", allow_module_level=True)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def reference(q, k_cache, v_cache, tables, q_seq, q_pos, scale):
    """float64: each query attends to storage positions 0..q_pos of its sequence (GQA by head groups)."""
    T, H, D = q.shape
    _, BS, KVH, _ = k_cache.shape
    g = H // KVH
    out = torch.empty(T, H, D, dtype=torch.float64)
    for t in range(T):
        n = int(q_pos[t]) + 1
        pos = torch.arange(n)
        slots = tables[q_seq[t], pos // BS].long() * BS + pos % BS
        k = k_cache.reshape(-1, KVH, D)[slots].double()
        v = v_cache.reshape(-1, KVH, D)[slots].double()
        for h in range(H):
            w = torch.softmax(k[:, h // g] @ q[t, h].double() * scale, 0)
            out[t, h] = w @ v[:, h // g]
    return out


def _cache(nblocks, BS, KVH, D, dtype):
    return (torch.randn(nblocks, BS, KVH, D, device=DEV).to(dtype), torch.randn(nblocks, BS, KVH, D, device=DEV).to(dtype))


def _check(out, q, k_cache, v_cache, tables, q_seq, q_pos, rows, tol):
    ref = reference(*(t.cpu().float() if t.is_floating_point() else t.cpu() for t in (q, k_cache, v_cache)),
                    tables.cpu(), q_seq, q_pos.cpu(), q.shape[-1] ** -0.5)
    assert torch.isfinite(out).all()
    assert (out.cpu().double()[rows] - ref[rows]).abs().max() < tol


# (H, KVH, D, BS, Q, splits): GQA groups 2, 3 (padded to 4), 8, 1 and 7; head dims 16..128 incl. 48 (padded to 64)
UNIFORM = [(4, 2, 64, 16, 1, None), (9, 3, 48, 16, 3, 2), (8, 1, 32, 4, 5, None), (16, 2, 128, 16, 4, 1),
           (7, 1, 16, 8, 2, 3), (2, 2, 64, 16, 1, 1)]


@pytest.mark.parametrize("H,KVH,D,BS,Q,splits", UNIFORM)
def test_uniform_layout_with_padding(H, KVH, D, BS, Q, splits):
    """B x Q padded batch as CUDA graphs build it: row 0 ends the span, row 1 has real queries then padding
    (position 0), row 2 is a dummy row (sentinel block, position 0)."""
    torch.manual_seed(H * D + Q)
    nblocks, span = 24, 8 * BS
    sentinel = nblocks - 1
    k_cache, v_cache = _cache(nblocks, BS, KVH, D, torch.float32)
    tables = torch.stack([torch.randperm(nblocks - 1)[:8], torch.randperm(nblocks - 1)[:8],
                          torch.full((8,), sentinel)]).to(DEV)
    n1 = max(1, Q - 1)
    q_pos = torch.zeros(3, Q, dtype=torch.int64)
    q_pos[0] = torch.arange(span - Q, span)
    q_pos[1, :n1] = torch.arange(BS + 1, BS + 1 + n1)
    qkv = torch.randn(3 * Q, (H + 2 * KVH) * D, device=DEV)        # q as a strided view, as in the model
    q = qkv[:, : H * D].view(-1, H, D)
    out = ta.triton_paged_attention(q, k_cache, v_cache, tables, q_pos.reshape(-1).to(DEV), span, D ** -0.5,
                                    queries=Q, splits=splits)
    _check(out, q, k_cache, v_cache, tables, torch.arange(3).repeat_interleave(Q), q_pos.reshape(-1), slice(None), 1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 4e-3)])
def test_varlen_layout_and_dtypes(dtype, tol):
    """cu_seqlens_q layout: 20 queries (two query blocks of 16 with g = 8), 1 and 3 queries; int32 tables."""
    torch.manual_seed(1)
    H, KVH, D, BS = 16, 2, 64, 16
    q_lens, ends = [20, 1, 3], [100, 30, 9]
    k_cache, v_cache = _cache(24, BS, KVH, D, dtype)
    tables = torch.stack([torch.randperm(24)[:8] for _ in q_lens]).int().to(DEV)
    q_pos = torch.cat([torch.arange(e - n, e) for e, n in zip(ends, q_lens)]).int()
    cu = torch.tensor([0, 20, 21, 24], dtype=torch.int32, device=DEV)
    q = torch.randn(len(q_pos), H, D, device=DEV).to(dtype)
    out = ta.triton_paged_attention(q, k_cache, v_cache, tables, q_pos.to(DEV), 128, D ** -0.5, queries=20,
                                    cu_seqlens_q=cu)
    assert out.dtype == dtype
    _check(out, q, k_cache, v_cache, tables, torch.arange(3).repeat_interleave(torch.tensor(q_lens)), q_pos,
           slice(None), tol)


def test_splits_agree():
    """The same step with 1, 2 and 5 splits of the span (including splits past a short sequence's end)."""
    torch.manual_seed(2)
    k_cache, v_cache = _cache(20, 16, 2, 32, torch.float32)
    tables = torch.stack([torch.randperm(20)[:10] for _ in range(2)]).to(DEV)
    q_pos = torch.tensor([155, 156, 3, 4], device=DEV)
    q = torch.randn(4, 4, 32, device=DEV)
    outs = [ta.triton_paged_attention(q, k_cache, v_cache, tables, q_pos, 160, 32 ** -0.5, queries=2, splits=s)
            for s in (1, 2, 5)]
    assert (outs[0] - outs[1]).abs().max() < 1e-5 and (outs[0] - outs[2]).abs().max() < 1e-5


def test_split_count_fills_the_gpu():
    assert ta.num_splits(8, 8192, 132) == 33              # 2 x 132 SMs over 8 programs
    assert ta.num_splits(512, 4096, 132) == 1
    assert ta.num_splits(8, 512, 132) == 4                # at least MIN_SPLIT_SPAN positions per split
    assert ta.num_splits(8, 64, 132) == 1


def test_launch_config_tiles():
    assert ta.launch_config(4, 1, 128) == (1, 64, 4)      # decode, 8B shape: 4 rows padded to 16
    assert ta.launch_config(4, 5, 128) == (8, 64, 4)      # verify K=4: 8 x 4 = 32 rows
    assert ta.launch_config(8, 32, 128)[0] == 16          # 128 rows at most: two query blocks


def test_bad_arguments_are_named():
    q = torch.zeros(2, 4, 16)
    cache = torch.zeros(4, 16, 3, 16)
    with pytest.raises(ValueError, match="3 KV heads"):
        ta.triton_paged_attention(q, cache, cache, torch.zeros(2, 1, dtype=torch.long), torch.zeros(2), 16, 1.0,
                                  queries=1)
    with pytest.raises(ValueError, match="head_dim=512"):
        big = torch.zeros(2, 4, 512)
        ta.triton_paged_attention(big, torch.zeros(4, 16, 2, 512), torch.zeros(4, 16, 2, 512),
                                  torch.zeros(2, 1, dtype=torch.long), torch.zeros(2), 16, 1.0, queries=1)


def test_engine_tokens_equal_with_the_kernel(tiny_llama, tiny_llama_draft):
    from tiny import PROMPTS

    from specdec import LLM, SamplingParams
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    prompts = PROMPTS[:2]
    ref = LLM(str(tiny_llama), mode="ar", attention_backend="sdpa", device=DEV).generate(prompts, params)
    for padded in (False, True):
        llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=3, attention_backend="triton", device=DEV,
                  graphs="padded" if padded else "off")
        assert llm.engine.runner.attn_backend == "triton"
        outs = llm.generate(prompts, params)
        assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
