"""engine/warmup.py: the warm-up before serving leaves the engine as it found it."""
from specdec import LLM, SamplingParams
from specdec.engine.warmup import prompt_lengths, warm_up


def test_warm_up_leaves_nothing_behind_and_changes_no_output(tiny_llama):
    llm = LLM(str(tiny_llama), draft="self:1", mode="sync", k=3, max_batch_size=4)
    eng = llm.engine
    assert warm_up(eng) == {"skipped": "no CUDA graphs on cpu"}        # CPU: nothing to capture
    free = eng.runner.num_free_blocks
    prompts = ["the quick brown fox", "hello world"]
    p = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    before = [o.text for o in llm.generate(prompts, p)]
    eng.metrics.reset()
    asked = []
    add = eng.add_request
    eng.add_request = lambda ids, params: (asked.append((len(ids), params.num_draft_tokens)), add(ids, params))[1]
    done = warm_up(eng, prompt_lens=(5, 40), rounds=2, cuda_only=False)
    del eng.add_request
    assert done["shapes"] == 2 * 4 * 3                 # two lengths x k = 3, 2, 1, 0 x batch buckets 1, 2, 4
    assert {k for _, k in asked} == {3, 2, 1, 0} and {n for n, _ in asked} == {5, 40}
    assert not eng.has_unfinished() and eng.runner.num_free_blocks == free
    assert eng.metrics.requests_finished == 0 and eng.metrics.decode_tokens == 0     # counters zeroed
    assert [o.text for o in llm.generate(prompts, p)] == before
    assert eng.metrics.decode_tokens > 0


def test_prompt_lengths_fill_each_context_bucket_from_its_lower_half():
    assert prompt_lengths(2048, 4096, 11) == [24, 65, 129, 257, 513, 1025]      # buckets 64 .. 2048
    assert prompt_lengths(2048, 300, 11) == [24, 65, 129]                       # 256: the model's length caps it
    assert all(n + 11 < c for n, c in zip(prompt_lengths(2048, 4096, 11), (64, 128, 256, 512, 1024, 2048)))


def test_warm_up_runs_each_draft_count_with_auto_k_off(tiny_llama):
    """k_policy="auto": the warm-up runs every draft count k exactly, with auto K off (it would pick lower counts,
    leaving their graphs to the first users' rounds), so dummy prompts teach it nothing; afterwards it starts
    from its prior."""
    llm = LLM(str(tiny_llama), draft="self:1", mode="sync", k=3, k_policy="auto", max_batch_size=2)
    eng = llm.engine
    prior = eng.auto_k.alpha
    seen = []
    step = eng.step
    eng.step = lambda: (seen.append(eng.auto_k), step())[1]
    warm_up(eng, prompt_lens=(5,), rounds=2, cuda_only=False)
    del eng.step
    assert seen and all(a is None for a in seen)
    assert eng.auto_k.alpha == prior and eng.auto_k.costs(1) == (None, eng.auto_k.default_growth)
