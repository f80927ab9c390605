"""The attention setting: per-step resolution (auto's table, aliases, errors), the flash-attn-4 argument
preparation against a fake of its entry point, and greedy tokens equal across backends on CPU."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from specdec.layers import attention, attention_choice, flash_attention  # noqa: E402
from specdec.layers.attention_choice import resolve_backend  # noqa: E402


def test_backend_names():
    from specdec.config import ATTENTION_BACKENDS
    assert ATTENTION_BACKENDS == ("auto", "flash_attn", "triton", "sdpa")
    assert attention_choice.canonical("torch") == "sdpa"
    with pytest.raises(ValueError, match="'flash'.*'auto', 'flash_attn', 'triton', 'sdpa'"):
        resolve_backend("flash", "cpu", 1, 1, 64)


def test_resolution_rules(monkeypatch):
    monkeypatch.setattr(flash_attention, "available", lambda: False)
    assert resolve_backend("auto", "cpu", 8, 5, 2048) == "sdpa"                      # CPU/MPS: SDPA
    assert resolve_backend("auto", "mps", 8, 1, 2048) == "sdpa"
    assert resolve_backend("auto", "cuda", 1, 1, 8192) == "triton"
    assert resolve_backend("auto", "cuda", 16, 5, 2048, graphed=True) == "triton"    # no flash-attn-4: next choice
    assert resolve_backend("auto", "cuda", 1, 300, 300) == "sdpa"                     # prefill
    assert resolve_backend("auto", "cuda", 1, 5, 2048, custom_mask=True) == "sdpa"   # SSD tree rows
    assert resolve_backend("triton", "cpu", 2, 5, 64) == "triton"
    assert resolve_backend("triton", "cpu", 2, 33, 64) == "sdpa"
    assert resolve_backend("torch", "cuda", 2, 1, 64) == "sdpa"
    with pytest.raises(ValueError, match="flash-attn-4"):
        resolve_backend("flash_attn", "cuda", 1, 1, 64)
    monkeypatch.setattr(flash_attention, "available", lambda: True)
    assert resolve_backend("auto", "cuda", 16, 5, 2048, 128, graphed=True) == "flash_attn"
    assert resolve_backend("auto", "cuda", 16, 5, 2048, 128) == "triton"             # eager: host cost too high
    assert resolve_backend("auto", "cuda", 16, 5, 2048, 80, graphed=True) == "triton"  # head dim it lacks
    # the table is keyed by head dim too: at batch 64, 2048 tokens, 5 queries flash-attn-4 measured faster for
    # head dim 128 (192.8 vs 231.9 us on an H100) and slower for 64 (131.9 vs 105.2 us)
    assert resolve_backend("auto", "cuda", 64, 5, 2048, 128, graphed=True) == "flash_attn"
    assert resolve_backend("auto", "cuda", 64, 5, 2048, 64, graphed=True) == "triton"
    assert resolve_backend("auto", "cuda", 1, 1, 8192, 128, graphed=True) == "triton"  # no split-KV in FA4 on SM90
    assert resolve_backend("flash_attn", "cuda", 1, 300, 300) == "flash_attn"        # prefill through varlen
    assert resolve_backend("flash_attn", "cuda", 1, 3, 300, custom_mask=True) == "sdpa"


def test_check_backend_at_start(monkeypatch):
    check = attention_choice.check_backend
    assert check("torch", 64, torch.float32) == "sdpa" and check("auto", 512, torch.float32) == "auto"
    with pytest.raises(ValueError, match="head_dim in \\[1, 256\\] \\(got 512\\)"):
        check("triton", 512, torch.bfloat16)
    monkeypatch.setattr(flash_attention, "available", lambda: False)
    with pytest.raises(ValueError, match="not importable"):
        check("flash_attn", 128, torch.bfloat16)
    monkeypatch.setattr(flash_attention, "available", lambda: True)
    assert check("flash_attn", 128, torch.bfloat16) == "flash_attn"
    with pytest.raises(ValueError, match="got torch.float32, 128"):
        check("flash_attn", 128, torch.float32)


def test_nearest_bucket():
    assert attention_choice.nearest(3, (1, 5)) == 5
    assert attention_choice.nearest(4, (1, 8, 16, 64)) == 8
    assert attention_choice.nearest(32, (1, 8, 16, 64)) == 64                         # tie: the larger
    assert attention_choice.nearest(100000, (512, 2048, 8192)) == 8192
    assert all(set(v) <= set(attention_choice.KERNELS) for v in attention_choice.TABLE.values())


def fake_flash_attn_varlen_func(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
                                seqused_q=None, seqused_k=None, page_table=None, softmax_scale=None, causal=False,
                                **unused):
    """flash-attn-4's paged semantics in plain torch: the argument checks it makes, bottom-right causal."""
    assert causal and cu_seqlens_k is None and not unused
    assert page_table.dtype == torch.int32 and page_table.stride(-1) == 1
    B, pages = page_table.shape
    num_pages, ps, kvh, d = k.shape
    assert seqused_k.dtype == torch.int32 and seqused_k.shape == (B,)
    if cu_seqlens_q is None:
        assert q.dim() == 4 and q.shape[0] == B and q.shape[1] == max_seqlen_q
        rows = [q[b] for b in range(B)]
    else:
        assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_q.shape == (B + 1,) and q.dim() == 3
        rows = [q[cu_seqlens_q[b]:cu_seqlens_q[b + 1]] for b in range(B)]
        assert max(len(r) for r in rows) <= max_seqlen_q
    outs = []
    for b, qb in enumerate(rows):
        L, n = int(seqused_k[b]), qb.shape[0]
        assert n <= L <= pages * ps and 0 <= int(page_table[b, : -(-L // ps)].min()) < num_pages
        pos = torch.arange(L)
        slots = page_table[b, pos // ps].long() * ps + pos % ps
        kb = k.reshape(-1, kvh, d)[slots].repeat_interleave(qb.shape[1] // kvh, 1)      # [L, H, D]
        vb = v.reshape(-1, kvh, d)[slots].repeat_interleave(qb.shape[1] // kvh, 1)
        s = torch.einsum("qhd,khd->hqk", qb.float(), kb.float()) * softmax_scale
        visible = pos[None, :] <= (L - n + torch.arange(n))[:, None]
        w = torch.softmax(s.masked_fill(~visible, float("-inf")), -1)
        outs.append(torch.einsum("hqk,khd->qhd", w, vb.float()).to(q.dtype))
    out = torch.stack(outs) if cu_seqlens_q is None else torch.cat(outs)
    return out, None


@pytest.fixture
def fake_flash(monkeypatch):
    monkeypatch.setattr(flash_attention, "_function", lambda: fake_flash_attn_varlen_func)
    monkeypatch.setattr(flash_attention, "available", lambda: True)
    monkeypatch.setattr(flash_attention, "DTYPES", (torch.float32, torch.float16, torch.bfloat16))
    monkeypatch.setattr(flash_attention, "HEAD_DIMS", (16, 32, 64, 96, 128))


def _step(B=3, BS=4, KVH=2, H=4, D=16, nblocks=30):
    torch.manual_seed(0)
    k_cache, v_cache = torch.randn(nblocks + 1, BS, KVH, D), torch.randn(nblocks + 1, BS, KVH, D)
    tables = [list(torch.randperm(nblocks)[:8].tolist()) for _ in range(B)]
    return k_cache, v_cache, tables


@pytest.mark.parametrize("backend", ["flash_attn", "triton"])
def test_varlen_context_matches_sdpa(fake_flash, backend):
    """Eager step: a prefill chunk, a verify and a decode in one batch."""
    k_cache, v_cache, tables = _step()
    q_lens, kv_lens = [7, 5, 1], [7, 20, 31]
    q_starts = [e - n for e, n in zip(kv_lens, q_lens)]
    q = torch.randn(sum(q_lens), 4, 16)
    slots = torch.zeros(sum(q_lens), dtype=torch.long)
    ctxs = [attention.build_context(q_lens, kv_lens, q_starts, tables, slots, 4, torch.device("cpu"), None, b)
            for b in ("sdpa", backend)]
    assert ctxs[1].backend == backend and ctxs[1].mask is None
    ref, out = (attention.paged_attention(q, k_cache, v_cache, c, 0.25) for c in ctxs)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("backend", ["flash_attn", "triton"])
def test_padded_context_matches_sdpa(fake_flash, backend):
    """CUDA-graph-shaped step, B x Q = 4 x 3: full verify rows, a row with one real query near the end of the
    KV bucket (seqused_k = start + Q runs past the table: the extra page-table columns) and a dummy row."""
    k_cache, v_cache, tables = _step(B=4)
    nb, BS, Q, sentinel = 8, 4, 3, 30
    table = torch.tensor(tables, dtype=torch.long)
    table[3] = sentinel
    q_pos = torch.tensor([[10, 11, 12], [29, 30, 31], [31, 0, 0], [0, 0, 0]])
    q = torch.randn(4 * Q, 4, 16)
    slots = torch.zeros(4 * Q, dtype=torch.long)
    ctxs = [attention.padded_context(q_pos, table, slots, nb * BS, b) for b in ("sdpa", backend)]
    assert ctxs[1].backend == backend
    ref, out = (attention.paged_attention(q, k_cache, v_cache, c, 0.25) for c in ctxs)
    real = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert torch.isfinite(out).all()
    assert (out[real] - ref[real]).abs().max() < 1e-5
    if backend == "flash_attn":
        args = ctxs[1].fa_args
        assert args["seqused_k"].tolist() == [13, 32, 34, 3] and args["page_table"].shape == (4, nb + 1)


def test_flash_attn_falls_back_to_triton_for_dtypes_it_lacks(fake_flash, monkeypatch, caplog):
    monkeypatch.setattr(flash_attention, "DTYPES", (torch.bfloat16,))
    k_cache, v_cache, tables = _step()
    ctx = attention.build_context([1, 1, 1], [5, 9, 2], [4, 8, 1], tables, torch.zeros(3, dtype=torch.long), 4,
                                  torch.device("cpu"), None, "flash_attn")
    ref = attention.build_context([1, 1, 1], [5, 9, 2], [4, 8, 1], tables, torch.zeros(3, dtype=torch.long), 4,
                                  torch.device("cpu"), None, "sdpa")
    q = torch.randn(3, 4, 16)
    out = attention.paged_attention(q, k_cache, v_cache, ctx, 0.25)
    assert ctx.fa_args is None and "using the Triton kernel" in caplog.text
    assert (out - attention.paged_attention(q, k_cache, v_cache, ref, 0.25)).abs().max() < 1e-5


@pytest.mark.parametrize("backend", ["flash_attn", "triton", "sdpa", "auto"])
def test_engine_tokens_equal_across_backends(tiny_llama, tiny_llama_draft, fake_flash, backend):
    """Greedy tokens of the speculative engine (eager, then padded graph-shaped steps) with each backend
    equal the target alone on SDPA."""
    from tiny import PROMPTS

    from specdec import LLM, SamplingParams
    from specdec.runner.paged import PagedRunner
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    prompts = PROMPTS[:3]
    ref = LLM(str(tiny_llama), mode="ar", attention_backend="sdpa", device="cpu").generate(prompts, params)
    for padded in (False, True):
        llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=3, attention_backend="sdpa", device="cpu",
                  graphs="padded" if padded else "off")
        for r in llm.engine.runners:
            if isinstance(r, PagedRunner):
                r.attn_backend = backend          # flash_attn is the fake here: not a setting the engine accepts on CPU
        outs = llm.generate(prompts, params)
        assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
