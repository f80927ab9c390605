"""Greedy exactness: AR equals HF generate; sync speculative decoding equals AR for every draft kind."""
import pytest
import torch
from tiny import PROMPTS
from transformers import AutoModelForCausalLM

from specdec import LLM, SamplingParams

GREEDY = SamplingParams(max_tokens=20, ignore_eos=True)


def hf_greedy(folder, prompt, n):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    model.generation_config.eos_token_id = None      # compare full-length outputs
    model.generation_config.pad_token_id = 0
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_gpt2"])
def test_ar_matches_hf_generate(fixture, request):
    folder = request.getfixturevalue(fixture)
    llm = LLM(str(folder), mode="ar", max_batch_size=4)
    kind = llm.engine.target.kind
    assert kind == ("hf" if fixture == "tiny_gpt2" else "native")
    outs = llm.generate(PROMPTS[:4], GREEDY)
    for prompt, out in zip(PROMPTS[:4], outs):
        assert out.token_ids == hf_greedy(folder, prompt, 20)


@pytest.fixture(scope="module")
def ar_reference(tiny_llama):
    llm = LLM(str(tiny_llama), mode="ar", max_batch_size=8)
    return {tuple(p): o.token_ids for p, o in zip(PROMPTS, llm.generate(PROMPTS, GREEDY))}


def _draft(kind, tiny_llama, tiny_llama_draft):
    return {"same": str(tiny_llama), "unrelated": str(tiny_llama_draft), "self": "self:1", "ngram": "ngram"}[kind]


@pytest.mark.parametrize("draft_kind", ["same", "unrelated", "self", "ngram"])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_sync_matches_ar(draft_kind, k, tiny_llama, tiny_llama_draft, ar_reference):
    llm = LLM(str(tiny_llama), draft=_draft(draft_kind, tiny_llama, tiny_llama_draft), mode="sync", k=k, max_batch_size=8)
    accepted = drafted = 0
    for bs in (1, 2, 4, 8):     # batches of prompts with different lengths
        prompts = PROMPTS[:bs]
        for p, o in zip(prompts, llm.generate(prompts, GREEDY)):
            assert o.token_ids == ar_reference[tuple(p)], (draft_kind, k, bs, p)
            accepted += o.stats["accepted"]
            drafted += o.stats["drafted"]
    if draft_kind == "same":
        assert accepted == drafted > 0                     # acceptance must be 100%
    elif draft_kind == "unrelated":
        assert drafted > 0 and accepted / drafted < 0.2   # near 0
    elif draft_kind == "self":
        assert drafted > 0


def test_sync_generic_hf_path_matches_ar(tiny_gpt2):
    ref = LLM(str(tiny_gpt2), mode="ar").generate(PROMPTS[:3], GREEDY)
    for draft in (str(tiny_gpt2), "ngram"):
        outs = LLM(str(tiny_gpt2), draft=draft, mode="sync", k=3).generate(PROMPTS[:3], GREEDY)
        assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    same = LLM(str(tiny_gpt2), draft=str(tiny_gpt2), mode="sync", k=3).generate(PROMPTS[:1], GREEDY)[0]
    assert same.stats["accepted"] == same.stats["drafted"] > 0


def test_mixed_per_request_k_and_draft_kv_append_off(tiny_llama, tiny_llama_draft, ar_reference):
    llm = LLM(str(tiny_llama), draft=str(tiny_llama), mode="sync", k=4, draft_kv_append=False, max_batch_size=8)
    params = [SamplingParams(max_tokens=20, ignore_eos=True, num_draft_tokens=n) for n in (0, 1, 4, 2)]
    outs = llm.generate(PROMPTS[:4], params)
    for p, o, sp in zip(PROMPTS[:4], outs, params):
        assert o.token_ids == ar_reference[tuple(p)]
        if sp.num_draft_tokens == 0:
            assert o.stats["drafted"] == 0 and o.stats["ar_steps"] > 0
        else:
            assert o.stats["accepted"] == o.stats["drafted"] > 0


def test_continuous_batching_more_requests_than_slots(tiny_llama, ar_reference):
    llm = LLM(str(tiny_llama), draft="ngram", mode="sync", k=3, max_batch_size=3)
    prompts = PROMPTS * 2
    outs = llm.generate(prompts, GREEDY)
    assert [o.token_ids for o in outs] == [ar_reference[tuple(p)] for p in prompts]


def test_batch_of_64(tiny_llama, tiny_llama_draft):
    prompts = [[(7 * i + j) % 300 + 1 for j in range(1 + i % 9)] for i in range(64)]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=64).generate(prompts, params)
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=3, max_batch_size=64)
    outs = llm.generate(prompts, params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    assert llm.metrics.decode_steps <= 8      # all 64 ran in one batch, not one by one
