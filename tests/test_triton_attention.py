"""The Triton paged-attention kernel equals the PyTorch path (CPU: Triton's interpreter; GPU: real)."""
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
        slots = tables[q_seq[t], pos // BS] * BS + pos % BS
        k = k_cache.reshape(-1, KVH, D)[slots].double()
        v = v_cache.reshape(-1, KVH, D)[slots].double()
        for h in range(H):
            w = torch.softmax(k[:, h // g] @ q[t, h].double() * scale, 0)
            out[t, h] = w @ v[:, h // g]
    return out


@pytest.mark.parametrize("H,KVH,D,BS", [(4, 2, 64, 16), (9, 3, 64, 16), (8, 8, 32, 4), (28, 4, 128, 256)])
def test_kernel_matches_reference(H, KVH, D, BS):
    torch.manual_seed(H + D)
    nblocks, B = 40, 3
    k_cache = torch.randn(nblocks, BS, KVH, D, device=DEV)
    v_cache = torch.randn(nblocks, BS, KVH, D, device=DEV)
    max_kv = 8 * BS
    tables = torch.stack([torch.randperm(nblocks)[:8] for _ in range(B)]).to(DEV)
    # decode-like and verify-like queries: several per sequence, various positions, some early
    q_seq = torch.tensor([0, 0, 0, 1, 2, 2], device=DEV)
    q_pos = torch.tensor([0, 5, max_kv - 1, 3 * BS + 1, 7, 8], device=DEV)
    qkv = torch.randn(len(q_seq), (H + 2 * KVH) * D, device=DEV)        # q as a strided view, as in the model
    q = qkv[:, : H * D].view(-1, H, D)
    scale = D ** -0.5
    out = ta.triton_paged_attention(q, k_cache, v_cache, tables, q_seq, q_pos, max_kv, scale)
    ref = reference(q.cpu(), k_cache.cpu(), v_cache.cpu(), tables.cpu(), q_seq.cpu(), q_pos.cpu(), scale)
    assert (out.cpu().double() - ref).abs().max() < 1e-4


def test_split_count_fills_the_gpu():
    assert ta.num_splits(1, 8, 4096, 32) == 33           # 2 x 132 SMs over 8 programs
    assert ta.num_splits(64, 8, 4096, 32) == 1
    assert ta.num_splits(1, 8, 64, 32) == 2               # never more splits than BLOCK_N chunks


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
