"""The padded static-buffer path (what CUDA graphs replay) gives the same tokens as the eager path."""
from tiny import PROMPTS

from specdec import LLM, SamplingParams


def test_padded_path_equals_eager(tiny_llama, tiny_llama_draft):
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=8).generate(PROMPTS, params)
    for draft, k in ((None, 0), (str(tiny_llama_draft), 3), (str(tiny_llama), 5), ("ngram", 4)):
        llm = LLM(str(tiny_llama), draft=draft, mode="sync" if draft else "ar", k=max(k, 1), max_batch_size=8,
                  graphs="padded")
        outs = llm.generate(PROMPTS, params)
        assert [o.token_ids for o in outs] == [o.token_ids for o in ref], draft
        assert llm.engine.runner.graph is not None
        if llm.engine.draft.runner is not None:           # a draft model: its K steps ran as one program
            assert llm.engine.draft.runner.graph.loops > 0
        if draft == str(tiny_llama):
            assert all(o.stats["accepted"] == o.stats["drafted"] for o in outs)
    # odd batch sizes pad up to a bucket; the padded rows must not disturb real ones
    llm = LLM(str(tiny_llama), draft=str(tiny_llama), mode="sync", k=2, max_batch_size=8, graphs="padded")
    outs = llm.generate(PROMPTS[:3], params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref[:3]]


def test_padded_path_sampling_is_seed_identical(tiny_llama, tiny_llama_draft):
    params = SamplingParams(max_tokens=16, temperature=0.8, top_k=20, seed=5, ignore_eos=True)
    a = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=3).generate(PROMPTS[:2], params)
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=3, graphs="padded", overlap=False)
    b = llm.generate(PROMPTS[:2], params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    # overlapped rounds (the default with graphs): the same draws, but the last rounds draft K where the plain
    # round drafts fewer (engine/spec_overlap.py), so the tokens agree up to there
    c = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=3, graphs="padded").generate(PROMPTS[:2], params)
    assert [o.token_ids[:16 - 3 - 1] for o in a] == [o.token_ids[:16 - 3 - 1] for o in c]
