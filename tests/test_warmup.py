"""engine/warmup.py: the warm-up before serving leaves the engine as it found it."""
from specdec import LLM, SamplingParams
from specdec.engine.warmup import warm_up


def test_warm_up_leaves_nothing_behind_and_changes_no_output(tiny_llama):
    llm = LLM(str(tiny_llama), draft="self:1", mode="sync", k=3, max_batch_size=4)
    eng = llm.engine
    assert warm_up(eng) == {"skipped": "no CUDA graphs on cpu"}        # CPU: nothing to capture
    free = eng.runner.num_free_blocks
    prompts = ["the quick brown fox", "hello world"]
    p = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    before = [o.text for o in llm.generate(prompts, p)]
    eng.metrics.reset()
    done = warm_up(eng, prompt_lens=(5, 40), rounds=2, cuda_only=False)
    assert done["shapes"] == 2 * 3                                     # batch buckets 1, 2, 4 at two lengths
    assert not eng.has_unfinished() and eng.runner.num_free_blocks == free
    assert eng.metrics.requests_finished == 0 and eng.metrics.decode_tokens == 0     # counters zeroed
    assert [o.text for o in llm.generate(prompts, p)] == before
    assert eng.metrics.decode_tokens > 0
