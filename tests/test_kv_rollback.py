"""KV rollback by length: no stale K/V is ever read, and every block returns to the pool."""
import torch
from tiny import PROMPTS
from transformers import AutoModelForCausalLM

from specdec import LLM, SamplingParams

GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)


def poison(runner, seq, first_pos):
    """Fill the K/V slots of seq at positions >= first_pos (up to its allocated blocks) with garbage."""
    table = runner.blocks.tables.get(seq.seq_id, [])
    bs = runner.blocks.block_size
    for pos in range(max(first_pos, 0), len(table) * bs):
        slot = table[pos // bs] * bs + pos % bs
        flat = runner.kv.view(runner.kv.shape[0], 2, -1, *runner.kv.shape[-2:])
        flat[:, :, slot] = torch.randn_like(flat[:, :, slot]) * 1e3


def run_poisoned(llm, prompts, target_offset, draft_offset=None):
    """After every decode round, poison the target cache from len(s) - 1 + target_offset onwards."""
    eng = llm.engine
    original = eng._decode

    def decode(k_now):
        outs = original(k_now)
        for s in eng.scheduler.running:
            poison(eng.runner, s, len(s) - 1 + target_offset)
            if draft_offset is not None:
                poison(eng.drafter.runner, s, s.draft_cached + draft_offset)
        return outs

    eng._decode = decode
    return llm.generate(prompts, GREEDY)


def test_rejected_kv_is_never_read(tiny_llama, tiny_llama_draft):
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=8).generate(PROMPTS, GREEDY)
    # unrelated draft: nearly every round rejects drafts whose K/V stays in the cache
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=4, max_batch_size=8)
    outs = run_poisoned(llm, PROMPTS, target_offset=0, draft_offset=0)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    # control: poisoning one committed position (len - 2) must change the output
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=4, max_batch_size=8)
    outs = run_poisoned(llm, PROMPTS, target_offset=-1)
    assert [o.token_ids for o in outs] != [o.token_ids for o in ref]


def test_draft_with_target_weights_keeps_full_acceptance_when_poisoned(tiny_llama):
    llm = LLM(str(tiny_llama), draft=str(tiny_llama), mode="sync", k=4, max_batch_size=8)
    outs = run_poisoned(llm, PROMPTS, target_offset=0, draft_offset=0)
    assert all(o.stats["accepted"] == o.stats["drafted"] > 0 for o in outs)


def _check_proposals(llm, draft_folder, sabotage: bool) -> int:
    """Record every proposal; count those that differ from the draft's own greedy continuation."""
    eng = llm.engine
    records = []
    propose, commit = eng.drafter.propose, eng.drafter.commit

    def rec_propose(seqs, ks, rows):
        prop = propose(seqs, ks, rows)
        for b, s in enumerate(seqs):
            records.append((list(s.token_ids), prop.tokens[b, : prop.num[b]].tolist()))
        return prop

    eng.drafter.propose = rec_propose
    if sabotage:   # skip the draft's rollback: its cache keeps K/V of rejected drafts
        eng.drafter.commit = lambda seq, old_len, acc, num, in_flight=False: None
    llm.generate(PROMPTS[:4], GREEDY)
    draft = AutoModelForCausalLM.from_pretrained(draft_folder).eval()
    draft.generation_config.eos_token_id = None
    draft.generation_config.pad_token_id = 0
    bad = 0
    for ctx, proposed in records:
        ref = draft.generate(torch.tensor([ctx]), max_new_tokens=len(proposed), do_sample=False)[0, len(ctx):].tolist()
        bad += ref != proposed
    eng.drafter.commit = commit
    return bad


def test_draft_rollback(tiny_llama, tiny_llama_draft):
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=4, max_batch_size=4)
    assert _check_proposals(llm, tiny_llama_draft, sabotage=False) == 0
    # control: with the rollback skipped the draft continues past the committed length, which
    # either reads K/V of rejected tokens (wrong proposals) or fails outright; both must show
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=4, max_batch_size=4)
    try:
        bad = _check_proposals(llm, tiny_llama_draft, sabotage=True)
    except (IndexError, RuntimeError, ValueError):
        bad = 1
    assert bad > 0


def test_blocks_return_to_pool(tiny_llama, tiny_llama_draft):
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=4, max_batch_size=4, num_kv_blocks=64)
    eng = llm.engine
    start = (eng.runner.num_free_blocks, eng.drafter.runner.num_free_blocks)
    llm.generate(PROMPTS, GREEDY)
    assert (eng.runner.num_free_blocks, eng.drafter.runner.num_free_blocks) == start
    # a stream abandoned mid-way is aborted and frees its blocks
    stream = llm.stream(PROMPTS[2], SamplingParams(max_tokens=100, ignore_eos=True))
    next(stream)
    next(stream)
    assert eng.runner.num_free_blocks < start[0]
    stream.close()
    assert (eng.runner.num_free_blocks, eng.drafter.runner.num_free_blocks) == start


def test_preemption_recomputes_and_keeps_output(tiny_llama, tiny_llama_draft):
    """A pool too small for all sequences at once: preempted sequences resume with identical output."""
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=8).generate(PROMPTS, SamplingParams(max_tokens=40, ignore_eos=True))
    llm = LLM(str(tiny_llama), draft=str(tiny_llama_draft), mode="sync", k=4, max_batch_size=8,
              num_kv_blocks=12, block_size=8)
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=40, ignore_eos=True))
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    assert llm.metrics.preemptions > 0
    assert llm.engine.runner.num_free_blocks == 12


def test_draft_prefills_with_the_target(tiny_llama, monkeypatch):
    """The draft reads the prompt at the target's prefill: every round's catch-up is the newest token or two
    (1, or 2 after a round that accepted all K), never the prompt, and the output stays the target's."""
    import specdec.draft.model as model
    catch_ups = []
    loop = model.draft_loop

    def spy(runner, catch_up, *args, **kw):
        catch_ups.append(max(len(f.tokens) for f in catch_up))
        return loop(runner, catch_up, *args, **kw)

    monkeypatch.setattr(model, "draft_loop", spy)
    ref = LLM(str(tiny_llama), mode="ar", max_batch_size=8).generate(PROMPTS, GREEDY)
    outs = LLM(str(tiny_llama), draft=str(tiny_llama), mode="sync", k=4, max_batch_size=8).generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ref]
    assert catch_ups and max(catch_ups) <= 2, catch_ups
