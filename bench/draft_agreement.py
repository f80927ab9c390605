"""Teacher-forced top-1 agreement of a draft with its target's greedy continuation on the built-in held-out chat
prompts: the per-token acceptance a draft can reach in the engine (compare `specdec acceptance`'s alpha), and
the share of the target's tokens a partial LM head (head_tokens.safetensors) cannot propose. CPU, float32.

    PYTHONPATH=backend .venv/bin/python bench/draft_agreement.py [--target smollm2-135m]
        [--draft drafts/smollm2-135m-draft] [--prompts 16] [--tokens 96]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
from specdec import LLM, SamplingParams  # noqa: E402
from specdec.distill.prompts import HELDOUT_PROMPTS  # noqa: E402
from specdec.models.draft_head import load_head_tokens  # noqa: E402
from specdec.models.registry import resolve  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--draft", default="drafts/smollm2-135m-draft")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=96)
    a = ap.parse_args()
    target = LLM(a.target, mode="ar", device="cpu", dtype="float32", max_batch_size=16)
    ids = [target.encode(t, SamplingParams(chat=True)) for t in HELDOUT_PROMPTS[: a.prompts]]
    outs = target.generate(ids, SamplingParams(max_tokens=a.tokens))
    vocab = target.engine.runner.vocab_size
    target.close()
    queries, answers = [], []
    for prompt, out in zip(ids, outs):
        full = prompt + out.token_ids
        for i, tok in enumerate(out.token_ids):
            queries.append(full[: len(prompt) + i])
            answers.append(tok)
    draft = LLM(a.draft, mode="ar", device="cpu", dtype="float32", max_batch_size=32)
    t0 = time.time()
    got = draft.generate(queries, SamplingParams(max_tokens=1, ignore_eos=True))
    agree = sum(g.token_ids[0] == t for g, t in zip(got, answers)) / len(answers)
    print(f"{len(answers)} positions of {len(ids)} held-out prompts: draft top-1 == target greedy {agree:.3f} "
          f"({time.time() - t0:.0f} s)")
    head = load_head_tokens(Path(resolve(a.draft)), vocab)
    if head is not None:
        kept = set(head.tolist())
        out_of_head = sum(t not in kept for t in answers) / len(answers)
        print(f"target tokens outside the draft's {len(kept)}-token LM head: {out_of_head:.2%}")


if __name__ == "__main__":
    main()
