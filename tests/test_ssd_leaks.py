"""SSD with the draft in the target's process: no KV block leaks. After requests finish, are preempted
(a small target pool) or are cancelled mid-stream, every block of both pools is back in its pool, no
tree branch (child sequence) is left, and the draft holds no sequence and no cache entry."""
import pytest
from tiny import PROMPTS

from specdec import LLM, SamplingParams

GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)
pytestmark = pytest.mark.usefixtures("one_thread")


def assert_idle(llm):
    eng = llm.engine
    d = eng.drafter
    d.exec.wait()                                  # frees are queued behind the draft's work in flight
    blocks = d.runner.blocks
    assert blocks.num_free == blocks.num_blocks and (blocks.refs == 0).all(), "draft KV blocks leaked"
    assert not blocks.tables, f"left in the draft pool: {sorted(blocks.tables)}"
    assert not d.core.seqs and not d.core.cache.entries
    t = eng.runner.blocks
    assert t.num_free == t.num_blocks and not t.tables


@pytest.fixture(scope="module")
def ar_ref(tiny_llama):
    outs = LLM(str(tiny_llama), mode="ar", max_batch_size=8).generate(PROMPTS, GREEDY)
    return {tuple(p): o.token_ids for p, o in zip(PROMPTS, outs)}


@pytest.mark.parametrize("policy", ["always", "auto"])
@pytest.mark.parametrize("same", [True, False], ids=["draft=target", "unrelated-draft"])
def test_finish_and_preemption_leave_no_blocks(tiny_llama, tiny_llama_draft, ar_ref, policy, same):
    draft = tiny_llama if same else tiny_llama_draft
    with LLM(str(tiny_llama), draft=str(draft), mode="async", k=4, max_batch_size=8, num_kv_blocks=10,
             tree_policy=policy, draft_placement="in_process") as llm:
        outs = llm.generate(PROMPTS, GREEDY)
        assert [o.token_ids for o in outs] == [ar_ref[tuple(p)] for p in PROMPTS]
        assert llm.metrics.preemptions > 0
        assert_idle(llm)
        outs = llm.generate(PROMPTS[:3], GREEDY)                  # and again, on the same pools
        assert [o.token_ids for o in outs] == [ar_ref[tuple(p)] for p in PROMPTS[:3]]
        assert_idle(llm)


def test_cancellation_mid_stream_leaves_no_blocks(tiny_llama, ar_ref):
    with LLM(str(tiny_llama), draft=str(tiny_llama), mode="async", k=3, max_batch_size=8,
             tree_policy="always", draft_placement="in_process") as llm:
        eng = llm.engine
        seqs = [eng.add_request(list(p), GREEDY) for p in PROMPTS]
        for _ in range(3):
            eng.step()
        for s in seqs[::2]:
            eng.abort(s)                             # a tree for them may be in flight right now
        while eng.has_unfinished():
            eng.step()
        for p, s in zip(PROMPTS[1::2], seqs[1::2]):
            assert s.output_ids == ar_ref[tuple(p)]
        assert llm.metrics.requests_aborted == 4
        assert_idle(llm)


def test_inline_executor_as_on_cuda(tiny_llama, tiny_llama_draft, ar_ref, monkeypatch):
    """On CUDA the draft's work is queued from the engine's own thread (no draft thread): the same
    executor mode, run on CPU, keeps the output and leaves no blocks."""
    from specdec.draft import inprocess
    init = inprocess.DraftExecutor.__init__
    monkeypatch.setattr(inprocess.DraftExecutor, "__init__", lambda self, device, threaded=None: init(self, device, False))
    for draft in (tiny_llama, tiny_llama_draft):
        with LLM(str(tiny_llama), draft=str(draft), mode="async", k=4, max_batch_size=8, num_kv_blocks=10,
                 draft_placement="in_process", graphs="padded") as llm:
            assert not llm.engine.drafter.exec.threaded
            outs = llm.generate(PROMPTS, GREEDY)
            assert [o.token_ids for o in outs] == [ar_ref[tuple(p)] for p in PROMPTS]
            assert_idle(llm)
