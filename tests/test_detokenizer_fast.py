"""The detokenizer's direct `tokenizers` path decodes exactly like transformers' decode (clean-up off)."""
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from specdec.engine.detokenizer import IncrementalDetokenizer, plain_fast_backend

SMOL = Path(__file__).resolve().parents[1] / "drafts" / "smollm2-135m-draft"


def test_fast_path_is_taken_and_decodes_like_transformers():
    tok = AutoTokenizer.from_pretrained(SMOL)
    fast = plain_fast_backend(tok)
    assert fast is not None                                   # SmolLM2's tokenizer takes the direct path
    rng = np.random.default_rng(0)
    specials = list(tok.all_special_ids)
    for n in (1, 2, 7, 40):
        for _ in range(20):
            ids = rng.integers(0, len(tok), size=n).tolist()
            ids[rng.integers(0, n)] = specials[rng.integers(0, len(specials))]      # a special token inside
            for skip in (True, False):
                assert fast.decode(ids, skip_special_tokens=skip) == \
                    tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


def test_incremental_text_equals_one_decode_with_emoji_and_specials():
    tok = AutoTokenizer.from_pretrained(SMOL)
    text = "Hi 😀 — 日本語 café.<|im_end|> x"
    ids = tok.encode(text)
    for step in (1, 2, 3):
        d = IncrementalDetokenizer(tok)
        out = "".join(d.push(ids[i:i + step]) for i in range(0, len(ids), step)) + d.push([], final=True)
        assert out == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
