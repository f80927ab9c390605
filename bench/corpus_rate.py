"""Why the distillation corpus is generated slower than the bench decodes: time `distill.data._run` on requests
shaped like the corpus's, against variants that each remove one difference from the bench.

    python bench/corpus_rate.py [--target synthetic:llama-tiny] [--device cpu] [--batch 256] [--requests 1024]

The corpus's requests: prompts of 20-60 tokens, uneven lengths (each stops after 32-256 tokens, as EOS does),
half greedy and half sampled at temperature 1, entering the engine in waves of batch/8 (data._run). Variants:
`even` (every request 256 tokens), `greedy` (no sampled rows), `bench` (both: the bench's shape). Prints tok/s
per variant and, with --profile, the host functions of the corpus-shaped run by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random

from specdec import LLM, SamplingParams
from specdec.distill.data import _run


def requests(n: int, vocab: int, even: bool, greedy: bool, seed: int = 0) -> list:
    r = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [r.randrange(10, vocab - 10) for _ in range(r.randint(20, 60))]
        temp = 0.0 if greedy or i % 2 == 0 else 1.0
        out.append((prompt, SamplingParams(temperature=temp, max_tokens=256 if even else r.randint(32, 256),
                                           ignore_eos=True)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="synthetic:llama-tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--variants", default="corpus,even,greedy,bench")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    llm = LLM(a.target, mode="ar", device=a.device, dtype=dtype, max_batch_size=a.batch, max_model_len=320)
    vocab = llm.engine.runner.vocab_size
    _run(llm, requests(a.batch, vocab, True, True, seed=99), "warm-up")          # graphs, compiles
    rows = []
    for name in a.variants.split(","):
        reqs = requests(a.requests, vocab, even=name in ("even", "bench"), greedy=name in ("greedy", "bench"))
        prof = cProfile.Profile() if a.profile and name == "corpus" else None
        if prof:
            prof.enable()
        seqs, seconds = _run(llm, reqs, name)
        if prof:
            prof.disable()
        tokens = sum(len(s.output_ids) for s in seqs)
        rows.append((name, tokens, seconds, llm.engine.metrics))
        print(f"{name:8s} {tokens:8d} tokens in {seconds:6.2f} s = {tokens / seconds:9.1f} tok/s", flush=True)
        if prof:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
            print(buf.getvalue())
    base = rows[0][1] / rows[0][2]
    print("\n| variant | tok/s | x corpus |\n|---|---|---|")
    for name, tokens, seconds, _ in rows:
        print(f"| {name} | {tokens / seconds:.1f} | {tokens / seconds / base:.2f} |")
    llm.close()


if __name__ == "__main__":
    main()
