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


def test_warm_up_of_ssd_in_process_runs_its_rounds_drafted_like_sync(tiny_llama, tiny_llama_draft):
    """SSD in this process (graphs "padded"): the grid runs with trees, then with the build rule held at "no tree",
    whose rounds overlap (their own keys); every key a run then meets was met in the warm-up, the core forgets the
    dummy prompts' measurements (the rule explores the tree first again), nothing is left behind and the output is
    the target's."""
    from specdec.runner.graph_tools import captures
    p = SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True)
    prompts = [[5, 17, 33, 99, 4], [42, 7, 8, 9, 10]]
    ref = [o.token_ids for o in LLM(str(tiny_llama), mode="ar", graphs="off").generate(prompts, p)]
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="async", k=2, max_batch_size=2, graphs="padded",
              draft_placement="in_process")
    eng, core = llm.engine, llm.engine.drafter.core
    free = eng.runner.num_free_blocks
    done = warm_up(eng, prompt_lens=(5,), rounds=2, cuda_only=False)
    assert done["shapes"] == 2 * 3 * 2                   # twice: k = 2, 1, 0 x batch buckets 1, 2
    assert core.summary()["moved_rounds"] == 0 and core.choice and core.force_tree is None
    assert core.rule.hit_samples == 0 and not core.rule.times      # forgotten
    assert not eng.has_unfinished() and eng.runner.num_free_blocks == free
    core.force_tree = False                              # the run drafts like sync at once, as the warm-up did
    c0 = captures()
    assert [o.token_ids for o in llm.generate(prompts, p)] == ref
    assert core.summary()["moved_rounds"] > 0 and captures() == c0, "a key first met after the warm-up"
