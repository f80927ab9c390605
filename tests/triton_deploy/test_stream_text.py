"""The target's text chunks without Triton: they concatenate to the engine's text.

Invariant: concatenating the texts of the chunks a :class:`ChunkTracker` makes equals the engine's
own text (what ``LLM.generate`` returns), for any split of multi-byte characters, with stop strings
(held-back and cut text), and in non-streaming mode; one chunk per round while streaming.
"""
from __future__ import annotations

import random

import pytest

from specdec.config import SamplingParams
from specdec.engine.commit import commit_tokens
from specdec.engine.detokenizer import IncrementalDetokenizer
from specdec.engine.engine import StepOutput
from specdec.engine.sequence import Sequence
from specdec.triton.stream_text import ChunkTracker

MULTIBYTE = "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001F600 hello \U0001F600\U0001F600 \u00e9\u00e9"


def _render(chunks) -> str:
    return "".join(c.text for c in chunks)


def _fake_rounds(tok, ids: list[int], sizes: list[int]):
    """StepOutputs as the engine makes them (commit_tokens: the round's ids and text delta), rounds of these sizes."""
    seq = Sequence([1], SamplingParams(max_tokens=len(ids), ignore_eos=True))
    seq.detok = IncrementalDetokenizer(tok)
    pos = 0
    for n in sizes:
        new = ids[pos:pos + n]
        pos += len(new)
        emitted, delta, reason = commit_tokens(seq, new, set(), 10 ** 6)
        yield StepOutput(seq, emitted, delta, reason is not None)
        if reason is not None:
            return


@pytest.mark.parametrize("seed", range(6))
def test_any_split_of_multibyte_text(tiny_llama, seed):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tok.encode(MULTIBYTE)
    assert len(ids) > len(MULTIBYTE.split())          # byte-level tokens split the characters
    rng = random.Random(seed)
    sizes = [rng.randint(1, 4) for _ in ids]
    tracker = ChunkTracker()
    outs = list(_fake_rounds(tok, ids, sizes))
    chunks = [c for out in outs if (c := tracker.on_step(out)) is not None]
    assert len(chunks) == len(outs)                   # one chunk per round, "" while a character is incomplete
    assert not any("\ufffd" in c.text for c in chunks)  # no half characters
    assert _render(chunks) == tok.decode(ids) == MULTIBYTE
    assert sum(c.num_new_tokens for c in chunks) == len(ids)
    assert [c.final for c in chunks].count(True) == 1 and chunks[-1].final


def _run_engine(engine, prompts, params, stream=True):
    seqs = [engine.add_request(p, params) for p in prompts]
    for s in seqs:
        s.stream_text = stream             # as TargetService._add does
    trackers = {s.seq_id: ChunkTracker(stream) for s in seqs}
    chunks = {s.seq_id: [] for s in seqs}
    while engine.has_unfinished():
        for out in engine.step():
            c = trackers[out.seq.seq_id].on_step(out)
            if c is not None:
                chunks[out.seq.seq_id].append(c)
    return seqs, chunks


@pytest.mark.parametrize("mode,draft", [("ar", None), ("sync", "self:1")])
def test_engine_streams_render_to_engine_text(tiny_llama, mode, draft):
    from specdec import LLM
    llm = LLM(str(tiny_llama), draft=draft, mode=mode, k=3)
    tok = llm.tokenizer
    prompts = [tok.encode(p) for p in ("the quick", MULTIBYTE, "hello world", "\U0001F600")]
    for params in (SamplingParams(temperature=0.0, max_tokens=40),
                   SamplingParams(temperature=1.0, max_tokens=40, seed=7)):
        seqs, chunks = _run_engine(llm.engine, prompts, params)
        for s in seqs:
            cs = chunks[s.seq_id]
            assert _render(cs) == s.detok.text
            assert [c.final for c in cs].count(True) == 1 and cs[-1].final
            assert sum(c.num_new_tokens for c in cs) == len(s.output_ids)


def test_stop_strings_hold_back_and_cut(tiny_llama):
    from specdec import LLM
    llm = LLM(str(tiny_llama), mode="ar")
    tok = llm.tokenizer
    prompt = tok.encode("the quick brown")
    full = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True))[0].text
    checked = 0
    for start in range(1, len(full) - 4, 3):
        stop = full[start:start + 3]
        if not stop.strip() or "\ufffd" in stop:
            continue
        params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True, stop=[stop, "zzz-never"])
        seqs, chunks = _run_engine(llm.engine, [prompt], params)
        assert _render(chunks[seqs[0].seq_id]) == seqs[0].detok.text == full[:full.index(stop)]
        checked += 1
        if checked == 8:
            break
    assert checked == 8


def test_non_streaming_is_one_chunk(tiny_llama):
    from specdec import LLM
    llm = LLM(str(tiny_llama), mode="ar")
    tok = llm.tokenizer
    seqs, chunks = _run_engine(llm.engine, [tok.encode(MULTIBYTE)], SamplingParams(temperature=0.0, max_tokens=30),
                               stream=False)
    cs = chunks[seqs[0].seq_id]
    assert len(cs) == 1 and cs[0].final and cs[0].num_new_tokens == len(seqs[0].output_ids)
    assert _render(cs) == seqs[0].detok.text == llm.generate([tok.encode(MULTIBYTE)], SamplingParams(
        temperature=0.0, max_tokens=30))[0].text
