"""`specdec generate PROMPT`: stream a completion to the terminal, then print speed and acceptance."""
from __future__ import annotations

import sys
import time

from .common import add_engine_args, engine_options


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="stream a completion for one prompt")
    p.add_argument("prompt", help="prompt text")
    add_engine_args(p, skip=("tensor_parallel_size", "devices"))
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--no-chat", action="store_true", help="send the prompt as is, without the chat template")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import LLM, SamplingParams
    kw = engine_options(args)
    kw.setdefault("mode", "sync")
    t0 = time.perf_counter()
    llm = LLM(**kw)
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_tokens=args.max_tokens, chat=not args.no_chat, seed=llm.config.seed)
    start = time.perf_counter()
    first = None
    n = 0
    stats = {}
    for chunk in llm.stream(args.prompt, params):
        if first is None:
            first = time.perf_counter()
        n += len(chunk.token_ids)
        stats = chunk.stats
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    end = time.perf_counter()
    m = llm.metrics.summary()
    cfg = llm.config
    desc = cfg.mode if cfg.mode == "ar" else f"{cfg.mode}, draft={cfg.spec.draft}, K={cfg.spec.k}"
    decode_s = end - (first or end)
    print(f"\n\n[{desc} | {cfg.device} {cfg.dtype}] {n} tokens in {end - start:.2f} s "
          f"({n / (end - start):.1f} tok/s; decode {max(n - 1, 0) / decode_s if decode_s > 0 else 0:.1f} tok/s; "
          f"TTFT {1e3 * ((first or end) - start):.0f} ms; load {load_s:.1f} s)", file=sys.stderr)
    if cfg.mode != "ar":
        print(f"acceptance {stats.get('acceptance_rate', 0):.2f}, tokens/round {stats.get('tokens_per_round', 0):.2f}, "
              f"rounds {stats.get('rounds', 0)}, avg draft {m['avg_draft_ms']:.1f} ms, avg verify {m['avg_verify_ms']:.1f} ms",
              file=sys.stderr)
    return 0
