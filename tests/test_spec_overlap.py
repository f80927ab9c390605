"""Overlapped speculative rounds (engine/spec_overlap.py): round r+1 is launched from round r's outcome on the
device (positions shifted on the device, step 0 fed from the device) before the host reads round r. Greedy
output stays the target's (and the plain rounds'); a draft identical to the target still accepts every draft
(its positions and tokens are right); stops the host learns late drop the round after; every KV block of
target and draft comes back. graphs="padded" runs
the static-buffer programs that CUDA graphs capture."""
from __future__ import annotations

import pytest
from tiny import PROMPTS

from specdec import LLM, SamplingParams


def _free_all(llm) -> bool:
    eng = llm.engine
    runners = [eng.runner] + ([eng.draft.runner] if eng.draft.runner is not None else [])
    return all(r.num_free_blocks == r.blocks.num_blocks for r in runners)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("which", ["unrelated", "identical"])
def test_overlapped_rounds_equal_plain_rounds(tiny_llama, tiny_llama_draft, moved, which, k):
    draft = tiny_llama_draft if which == "unrelated" else tiny_llama
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=8, graphs="off")
    base = ref.generate(PROMPTS, SamplingParams(max_tokens=40, ignore_eos=True))
    # per-row lengths and stop tokens the host only learns after the next round was launched
    params = [SamplingParams(max_tokens=n, ignore_eos=True, stop_token_ids=[o.token_ids[17]] if i % 3 == 1 else [])
              for i, (n, o) in enumerate(zip((40, 3, 40, 25, 12, 40, 31, 40), base))]
    want = ref.generate(PROMPTS, params)
    plain = LLM(str(tiny_llama), mode="sync", draft=str(draft), k=k, max_batch_size=8, graphs="padded", overlap=False)
    fast = LLM(str(tiny_llama), mode="sync", draft=str(draft), k=k, max_batch_size=8, graphs="padded")
    a = plain.generate(PROMPTS, params)
    n0 = moved[0]
    b = fast.generate(PROMPTS, params)
    assert moved[0] - n0 >= 5, "the rounds did not overlap"
    assert [o.token_ids for o in b] == [o.token_ids for o in want] == [o.token_ids for o in a]
    assert [o.finish_reason for o in b] == [o.finish_reason for o in want]
    assert any(o.finish_reason == "stop" for o in b)
    fm = fast.engine.metrics
    if which == "identical":                      # right positions and tokens on the device: every draft accepted
        assert fm.accepted == fm.drafted > 0
    fast.engine.step()                            # drains a round still in flight
    assert fast.engine.spec_pipeline.inflight is None and _free_all(fast) and _free_all(plain)


def test_overlapped_rounds_with_admission_abort_and_text_stop(tiny_llama, tiny_llama_draft, moved):
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=4, graphs="off")
    llm = LLM(str(tiny_llama), mode="sync", draft=str(tiny_llama), k=2, max_batch_size=4, graphs="padded")
    eng = llm.engine
    first = eng.add_request(PROMPTS[0], SamplingParams(max_tokens=60, ignore_eos=True))
    for _ in range(5):
        eng.step()
    assert eng.spec_pipeline.inflight is not None
    later = eng.add_request(PROMPTS[1], SamplingParams(max_tokens=30, ignore_eos=True))   # joins mid-flight
    for _ in range(4):
        eng.step()
    eng.abort(first)
    while not later.finished:
        eng.step()
    eng.step()
    expect = ref.generate([PROMPTS[1]], SamplingParams(max_tokens=30, ignore_eos=True))[0].token_ids
    assert later.output_ids == expect and first.finish_reason == "abort"
    assert _free_all(llm)
    text = ref.generate([PROMPTS[2]], SamplingParams(max_tokens=40, ignore_eos=True))[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    if stop.strip():
        want = ref.generate([PROMPTS[2]], SamplingParams(max_tokens=40, ignore_eos=True, stop=[stop]))[0]
        got = llm.generate([PROMPTS[2]], SamplingParams(max_tokens=40, ignore_eos=True, stop=[stop]))[0]
        assert (got.text, got.token_ids, got.finish_reason) == (want.text, want.token_ids, want.finish_reason)
    assert moved[0] > 0
    eng.step()
    assert _free_all(llm)


def test_overlapped_rounds_under_preemption(tiny_llama, tiny_llama_draft, moved):
    """A pool too small for every sequence: rows preempted while a round is in flight resume with the same output."""
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=8, graphs="off").generate(
        PROMPTS, SamplingParams(max_tokens=40, ignore_eos=True))
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=2, max_batch_size=8, graphs="padded",
              num_kv_blocks=14, block_size=8)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=40, ignore_eos=True))
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    assert llm.metrics.preemptions > 0 and moved[0] > 0
    llm.engine.step()
    assert _free_all(llm)


def test_sampled_rows_overlap_and_seeded_ones_match_plain_rounds(tiny_llama, tiny_llama_draft, moved):
    """Sampled rows overlap too (the draft loop samples with each row's parameters and returns q; the verify's
    rejection sampling runs on the device after the graph), drawing the plain round's uniforms in the plain
    round's order: seeded requests, mixed with greedy rows and filters, give exactly the plain rounds' tokens
    (whose distribution tests/test_distribution.py checks) up to the last rounds, for an unrelated and an
    identical draft."""
    for draft in (tiny_llama_draft, tiny_llama):
        params = [SamplingParams(max_tokens=36, ignore_eos=True, temperature=t, top_k=tk, top_p=tp, seed=10 + i)
                  for i, (t, tk, tp) in enumerate([(0.8, 0, 1.0), (0.0, 0, 1.0), (1.2, 20, 0.9), (0.5, 0, 0.8)] * 2)]
        outs = {}
        for overlap in (False, True):
            llm = LLM(str(tiny_llama), draft=str(draft), mode="sync", k=3, max_batch_size=8, graphs="padded",
                      overlap=overlap)
            n0 = moved[0]
            outs[overlap] = [o.token_ids for o in llm.generate(PROMPTS, params)]
            assert (moved[0] > n0 + 5) == overlap
            llm.engine.step()
            assert _free_all(llm)
        # the same tokens up to the rounds near max_tokens, where the plain round drafts fewer than K (its draws
        # differ from there: both are samples of the target's distribution)
        cut = 36 - 3 - 1
        assert [o[:cut] for o in outs[True]] == [o[:cut] for o in outs[False]]
        assert len({tuple(o) for o in outs[True]}) == len(PROMPTS)


def test_auto_k_rounds_overlap(tiny_llama, moved):
    """k_policy auto: its speculative rounds overlap too (each observed when committed, a step after its
    launch); with a draft identical to the target it keeps drafting, and the output stays AR's."""
    params = SamplingParams(max_tokens=48, ignore_eos=True)
    ref = LLM(str(tiny_llama), mode="ar", graphs="off").generate(PROMPTS[:3], params)
    llm = LLM(str(tiny_llama), draft=str(tiny_llama), mode="sync", k=3, k_policy="auto", graphs="padded")
    outs = llm.generate(PROMPTS[:3], params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    est = llm.engine.auto_k
    assert moved[0] > 0 and est.alpha > 0.9 and est.costs(3)[0] is not None
    llm.engine.step()
    assert _free_all(llm)


def test_device_fed_step_zero_is_the_two_newest_committed_tokens(tiny_llama, monkeypatch):
    """Each overlapped draft loop starts from the two newest committed tokens at the two newest positions, both
    known only on the device at launch: checked against each row's final tokens, with a draft that accepts some
    drafts and rejects others (self:1), so both the accepted-draft and the no-accepted-draft cases occur. (The
    padded path keeps one output buffer per program, like a replayed graph, so a stale view would show here.)"""
    from specdec.draft.model import ModelDrafter
    seen = []
    propose = ModelDrafter.propose_moved

    def spy(self, seqs, ks, tokens0, shift, most, sampling=None):
        seen.append([(s, len(s), int(shift[b]), tokens0[b].tolist()) for b, s in enumerate(seqs)])
        return propose(self, seqs, ks, tokens0, shift, most, sampling)

    monkeypatch.setattr(ModelDrafter, "propose_moved", spy)
    llm = LLM(str(tiny_llama), draft="self:1", mode="sync", k=3, max_batch_size=4, graphs="padded")
    outs = llm.generate(PROMPTS[:4], SamplingParams(max_tokens=40, ignore_eos=True))
    full = {id(o): None for o in outs}
    checked, shifts = 0, set()
    for launch in seen:
        for s, n, shift, pair in launch:
            tokens = s.prompt_ids + s.output_ids
            end = n + shift                       # the row's length after the round in flight at this launch
            if end <= len(tokens):
                assert pair == tokens[end - 2: end]
                checked += 1
                shifts.add(shift)
    assert checked > 20 and {1, 4} <= shifts and len(shifts) >= 3, (checked, shifts)
    assert full


@pytest.fixture
def rule_says(monkeypatch):
    """The build rule's choices, scripted: rule_says[0] is the choice while rule_says[1] > 0 rounds are left
    (counting down), then the opposite. Round times would make the choice depend on this machine's speed."""
    from specdec.spec.adaptive import BuildRule
    script = [False, 10 ** 9]

    def build(self, batch, *tokens):
        script[1] -= 1
        choice = script[0] if script[1] >= 0 else not script[0]
        self.decisions[choice] += 1
        return choice

    monkeypatch.setattr(BuildRule, "build", build)
    return script


@pytest.mark.parametrize("which", ["unrelated", "identical"])
def test_ssd_rounds_drafted_like_sync_overlap(tiny_llama, tiny_llama_draft, moved, rule_says, which):
    """SSD in this process, its build rule drafting like sync: greedy rounds go through the overlapped pipeline
    (launched from the device's outcome before the host reads it), every MOVED_PER_MEASURE-th round is a plain
    one that samples the hit rate, the output is AR's, an identical draft accepts every draft (the K/V the
    overlapped loops wrote is right, and the core catches nothing up again), and every block comes back."""
    from specdec.draft.core import MOVED_PER_MEASURE
    draft = tiny_llama_draft if which == "unrelated" else tiny_llama
    params = SamplingParams(max_tokens=60 if which == "unrelated" else 150, ignore_eos=True)
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=8, graphs="off").generate(PROMPTS, params)
    llm = LLM(str(tiny_llama), draft=str(draft), mode="async", k=3, max_batch_size=8, graphs="padded",
              draft_placement="in_process")
    core = llm.engine.drafter.core
    outs = llm.generate(PROMPTS, params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    s = core.summary()
    assert s["moved_rounds"] >= 2 * MOVED_PER_MEASURE and moved[0] == s["moved_rounds"], (s, moved[0])
    assert s["tree_rounds"] == 0 and core.rule.hit_samples > 0           # the plain rounds measured the hit rate
    assert s["device_rounds"] >= s["moved_rounds"] // MOVED_PER_MEASURE
    m = llm.metrics
    assert m.cache_lookups == m.rounds > 0                               # every overlapped round: a JIT lookup
    assert m.cache_hits <= len(PROMPTS)                                  # only the first rounds (prefill trees)
    if which == "identical":
        assert m.accepted == m.drafted > 0
        assert all(d.kv_valid >= len(d.tokens) - 1 - 3 for d in core.seqs.values())
    llm.engine.step()
    assert _free_all(llm)


def test_ssd_turns_back_to_trees_after_overlapped_rounds(tiny_llama, moved, rule_says):
    """The rule drafts like sync for a while (overlapped rounds), then builds trees again: the core, told of the
    overlapped rounds afterwards, forks its trees from the right tokens, so a draft identical to the target hits
    the cache, and the output stays AR's."""
    params = SamplingParams(max_tokens=150, ignore_eos=True)
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=4, graphs="off").generate(PROMPTS[:4], params)
    rule_says[1] = 1                 # one choice to draft like sync (its overlapped rounds follow), then trees
    llm = LLM(str(tiny_llama), draft=str(tiny_llama), mode="async", k=3, max_batch_size=4, graphs="padded",
              draft_placement="in_process")
    outs = llm.generate(PROMPTS[:4], params)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    s, m = llm.engine.drafter.core.summary(), llm.metrics
    assert moved[0] > 0 and s["tree_rounds"] > 0 and m.cache_hits > 0, (s, m.cache_hits)
    assert m.accepted == m.drafted > 0
    llm.engine.step()
    assert _free_all(llm)
