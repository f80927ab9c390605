"""Stop conditions inside a round, streaming text deltas, and clear errors for bad input."""
import json

import pytest
from tiny import PROMPTS

from specdec import LLM, SamplingParams
from specdec.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def same_draft_llm(tiny_llama):
    # draft == target: every round accepts all K drafts, so stops land mid-round
    return LLM(str(tiny_llama), draft=str(tiny_llama), mode="sync", k=6, max_batch_size=4)


def test_max_tokens_cuts_inside_a_round(same_draft_llm):
    for n in (1, 2, 5, 9, 13):
        out = same_draft_llm.generate(PROMPTS[0], SamplingParams(max_tokens=n, ignore_eos=True))[0]
        assert len(out.token_ids) == n and out.finish_reason == "length"


def test_stop_string_mid_round(same_draft_llm, tiny_llama):
    full = same_draft_llm.generate(PROMPTS[0], SamplingParams(max_tokens=30, ignore_eos=True))[0]
    text = full.text
    assert len(text) > 12
    stop = text[7:10]                      # ends in the middle of some round
    first = text.find(stop)
    out = same_draft_llm.generate(PROMPTS[0], SamplingParams(max_tokens=30, ignore_eos=True, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == text[:first]
    assert len(out.token_ids) < len(full.token_ids)
    assert out.token_ids == full.token_ids[: len(out.token_ids)]
    # streamed deltas never show any part of the stop string
    chunks = list(same_draft_llm.stream(PROMPTS[0], SamplingParams(max_tokens=30, ignore_eos=True, stop=[stop])))
    assert "".join(c.text for c in chunks) == text[:first]
    assert chunks[-1].finished and sum(len(c.token_ids) for c in chunks) == len(out.token_ids)


def test_eos_and_stop_token_ids(same_draft_llm):
    full = same_draft_llm.generate(PROMPTS[1], SamplingParams(max_tokens=30, ignore_eos=True))[0]
    stop_tok = full.token_ids[5]
    first = full.token_ids.index(stop_tok)
    out = same_draft_llm.generate(PROMPTS[1], SamplingParams(max_tokens=30, stop_token_ids=[stop_tok]))[0]
    assert out.token_ids == full.token_ids[: first + 1] and out.finish_reason == "stop"


def test_stream_concatenation_equals_decode(same_draft_llm):
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    chunks = list(same_draft_llm.stream(PROMPTS[3], params))
    ids = [t for c in chunks for t in c.token_ids]
    assert "".join(c.text for c in chunks) == same_draft_llm.tokenizer.decode(ids, skip_special_tokens=True)
    assert max(len(c.token_ids) for c in chunks) > 1            # whole rounds arrive as one chunk


def test_detokenizer_multibyte(tiny_llama):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    text = "caf\u00e9 \U0001F600 \u65e5\u672c\u8a9e na\u00efve \U0001F600\U0001F600 over"
    ids = tok.encode(text)
    for step in (1, 2, 3):
        d = IncrementalDetokenizer(tok)
        pieces = [d.push(ids[i:i + step], final=i + step >= len(ids)) for i in range(0, len(ids), step)]
        assert "".join(pieces) == tok.decode(ids) == text
        assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("kwargs,field", [
    (dict(temperature=-0.5), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(max_tokens=0), "max_tokens"), (dict(num_draft_tokens=17), "num_draft_tokens"),
    (dict(stop=[""]), "stop"),
])
def test_sampling_params_errors_name_field_and_range(kwargs, field):
    with pytest.raises(ValueError, match=field) as e:
        SamplingParams(**kwargs)
    assert "allowed" in str(e.value) or "must" in str(e.value)


def test_bad_prompts(same_draft_llm):
    eng = same_draft_llm.engine
    with pytest.raises(ValueError, match="empty"):
        eng.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="out of range"):
        eng.add_request([10**6], SamplingParams())
    with pytest.raises(ValueError, match="max_model_len"):
        eng.add_request([1] * eng.max_model_len, SamplingParams())


def test_loading_errors(tmp_path, tiny_llama, model_dir):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        LLM(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        LLM(str(tmp_path / "empty"))
    # a draft with another tokenizer
    from tiny import make_model, word_tokenizer
    other = make_model(model_dir / "other_vocab", "llama", tokenizer=word_tokenizer(40), seed=5)
    with pytest.raises(ValueError, match="tokenizer differs"):
        LLM(str(tiny_llama), draft=str(other), mode="sync")
    # an architecture transformers does not know
    bad = tmp_path / "weird"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no-such-arch", "architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(ValueError, match="no-such-arch|NoSuch"):
        LLM(str(bad))
    with pytest.raises(ValueError, match="self:N"):
        LLM(str(tiny_llama), draft="self:x", mode="sync")
    with pytest.raises(ValueError, match="layers must be in"):
        LLM(str(tiny_llama), draft="self:5", mode="sync")
    with pytest.raises(ValueError, match="needs a draft"):
        LLM(str(tiny_llama), mode="sync")
