"""Overlapped AR steps (engine/overlap.py): the next step is launched from the device's tokens before
the host reads the current one. Same tokens as plain stepping, stops that the host only learns after
the next step was launched (stop tokens, stop strings) drop that step's token, and every KV block
comes back. The padded static-buffer path (graphs="padded") runs the same programs as CUDA graphs."""
from __future__ import annotations

from tiny import PROMPTS

from specdec import LLM, SamplingParams


def _free_all(llm) -> bool:
    r = llm.engine.runner
    return r.num_free_blocks == r.blocks.num_blocks


def test_overlapped_steps_equal_plain_steps(tiny_llama):
    plain = LLM(str(tiny_llama), mode="ar", max_batch_size=8, graphs="off")
    fast = LLM(str(tiny_llama), mode="ar", max_batch_size=8, graphs="padded")
    assert fast.config.overlap
    ref = plain.generate(PROMPTS, SamplingParams(max_tokens=24, ignore_eos=True))
    # per-row stops the host cannot foresee: a token each reference output reaches mid-way
    params = [SamplingParams(max_tokens=n, ignore_eos=True, stop_token_ids=[o.token_ids[5]] if i % 2 else [])
              for i, (n, o) in enumerate(zip((1, 2, 3, 24, 24, 7, 24, 13), ref))]
    a = plain.generate(PROMPTS, params)
    b = fast.generate(PROMPTS, params)
    assert [o.token_ids for o in b] == [o.token_ids for o in a]
    assert [o.finish_reason for o in b] == [o.finish_reason for o in a]
    assert any(o.finish_reason == "stop" for o in b) and any(o.finish_reason == "length" for o in b)
    assert fast.engine.pipeline.inflight is not None or _free_all(fast)
    fast.engine.step()                                   # drains what is still in flight
    assert fast.engine.pipeline.inflight is None and _free_all(fast) and _free_all(plain)


def test_overlap_with_admission_abort_and_text_stops(tiny_llama):
    llm = LLM(str(tiny_llama), mode="ar", max_batch_size=4, graphs="padded")
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=4, graphs="off")
    eng = llm.engine
    first = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=30, ignore_eos=True))
    for _ in range(4):
        eng.step()
    later = eng.add_request(PROMPTS[1], SamplingParams(max_tokens=10, ignore_eos=True))   # joins mid-flight
    for _ in range(3):
        eng.step()
    eng.abort(first)
    while not later.finished:
        eng.step()
    eng.step()
    expect = ref.generate([PROMPTS[1]], SamplingParams(max_tokens=10, ignore_eos=True))[0].token_ids
    assert later.output_ids == expect and first.finish_reason == "abort"
    assert _free_all(llm)
    # a text stop (stop strings are checked on the host, after the next step was launched)
    text = ref.generate([PROMPTS[2]], SamplingParams(max_tokens=16, ignore_eos=True))[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    if stop.strip():
        want = ref.generate([PROMPTS[2]], SamplingParams(max_tokens=16, ignore_eos=True, stop=[stop]))[0]
        got = llm.generate([PROMPTS[2]], SamplingParams(max_tokens=16, ignore_eos=True, stop=[stop]))[0]
        assert (got.text, got.token_ids, got.finish_reason) == (want.text, want.token_ids, want.finish_reason)


def test_sampled_rows_overlap_with_the_plain_paths_tokens(tiny_llama):
    """Sampled rows (seeded) beside greedy ones: the overlapped path samples on the device from the same
    per-row streams as plain stepping, so every row's tokens are the same; stops still drop the step after."""
    plain = LLM(str(tiny_llama), mode="ar", max_batch_size=8, graphs="off")
    fast = LLM(str(tiny_llama), mode="ar", max_batch_size=8, graphs="padded")
    params = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=0.0 if i % 3 == 0 else 0.9, seed=100 + i,
                             top_k=20 if i == 4 else 0, top_p=0.8 if i == 5 else 1.0)
              for i, n in enumerate((24, 3, 24, 9, 24, 17, 24, 2))]
    a = plain.generate(PROMPTS, params)
    seen = []
    launch = fast.engine.pipeline._sampled
    fast.engine.pipeline._sampled = lambda *x: (seen.append(1), launch(*x))[1]
    b = fast.generate(PROMPTS, params)
    assert seen, "the sampled rows did not take the overlapped path"
    assert [o.token_ids for o in b] == [o.token_ids for o in a]
    assert len({tuple(o.token_ids) for o in a}) == len(a)              # the rows differ: sampling happened
    fast.engine.step()
    assert fast.engine.pipeline.inflight is None and _free_all(fast)
