"""The target/postprocessing text protocol without Triton: chunks of ids render to the engine's text.

Invariant: concatenating ``decode_chunk`` over the chunks a :class:`ChunkTracker` makes equals the
engine's own text (what ``LLM.generate`` returns), for any split of multi-byte characters, with
stop strings (held-back and cut text), and in non-streaming mode.
"""
from __future__ import annotations

import random

import pytest

from specdec.config import SamplingParams
from specdec.engine.detokenizer import IncrementalDetokenizer
from specdec.engine.engine import StepOutput
from specdec.engine.sequence import Sequence
from specdec.triton.stream_text import ChunkTracker, decode_chunk

MULTIBYTE = "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001F600 hello \U0001F600\U0001F600 \u00e9\u00e9"


def _render(tok, chunks) -> str:
    return "".join(decode_chunk(tok, c.window, c.context_length, c.final, c.max_chars) for c in chunks)


def _fake_rounds(tok, ids: list[int], sizes: list[int]):
    """StepOutputs as the engine makes them without stop strings: one detokenizer push per round."""
    seq = Sequence([1], SamplingParams(max_tokens=len(ids)))
    seq.detok = IncrementalDetokenizer(tok)
    pos = 0
    for n in sizes:
        new = ids[pos:pos + n]
        pos += len(new)
        final = pos >= len(ids)
        seq.output_ids.extend(new)
        seq.detok.push(new, final=final)
        seq.emitted_chars = len(seq.detok.text)
        yield StepOutput(seq, new, "", final)
        if final:
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
    chunks = [c for out in _fake_rounds(tok, ids, sizes) if (c := tracker.on_step(out)) is not None]
    assert _render(tok, chunks) == tok.decode(ids) == MULTIBYTE
    assert sum(c.num_new_tokens for c in chunks) == len(ids)


def _run_engine(engine, prompts, params, stream=True):
    seqs = [engine.add_request(p, params) for p in prompts]
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
            assert _render(tok, cs) == s.detok.text
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
        assert _render(tok, chunks[seqs[0].seq_id]) == seqs[0].detok.text == full[:full.index(stop)]
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
    assert len(cs) == 1 and cs[0].final and cs[0].context_length == 0
    assert _render(tok, cs) == seqs[0].detok.text


def test_decode_chunk_rejects_a_bad_context_length(tiny_llama):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(ValueError, match="context_length=5"):
        decode_chunk(tok, [1, 2], 5, False)
