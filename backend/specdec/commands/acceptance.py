"""`specdec acceptance`: how well drafts predict a target, on held-out prompts.

For every draft x temperature x K, over the rounds with >= 1 draft token, the two headline metrics
(the same definitions as ``specdec bench``, the Triton outputs and the Prometheus metrics):

* acceptance rate (``acc.rate``): accepted / drafted tokens (falls as K grows);
* tau, the mean accepted length: tokens committed per target forward (1 + accepted per round);

and as extras:

* alpha: per-token acceptance, the probability that a draft token is accepted given that the
  ones before it were: accepted / (accepted + rejections), where a rejection is a round that
  stopped before its K-th draft token (the maximum-likelihood estimate under i.i.d. acceptance;
  then E[tokens/round] = (1 - alpha^(K+1)) / (1 - alpha)). A round proposing fewer than K
  tokens (ngram without a long enough match, the end of a request) that is fully accepted
  also counts as a rejection, so alpha is a lower bound there.
* the speculation-cache hit rate (mode "async"); decode speed, next to the target's plain
  autoregressive speed on the same prompts, same run.

Prompts: the built-in HELDOUT set (disjoint from the prompts ``specdec distill`` trains on) or
a JSONL file.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

COUNTERS = ("drafted", "accepted", "rounds", "spec_tokens", "cache_hits", "cache_lookups")


@dataclass
class Row:
    draft: str
    mode: str
    temp: float
    k: int
    alpha: float
    accept_rate: float                # acceptance rate: accepted / drafted
    tokens_per_round: float           # tau: committed tokens per target forward
    hit_rate: float | None
    tok_s: float
    ar_tok_s: float | None
    tokens: int


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def add_parser(sub) -> None:
    p = sub.add_parser("acceptance", help="measure drafts' acceptance and speed on held-out prompts")
    p.add_argument("--target", default="smollm2-135m", help="alias, HF folder or .gguf file")
    p.add_argument("--draft", required=True, help="comma-separated drafts: folder/alias, self:N, ngram")
    p.add_argument("--mode", default="sync", choices=["sync", "async"], help="speculative mode (default sync)")
    p.add_argument("--k", type=_ints, default=[4], help="comma-separated K values (default 4)")
    p.add_argument("--temp", type=_floats, default=[0.0, 0.7], help="comma-separated temperatures (default 0,0.7)")
    p.add_argument("--prompts", default=None, help="JSONL file: one string or {\"prompt\": ...} per line "
                                                   "(default: the built-in held-out prompts)")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--batch", type=int, default=1, help="requests decoded together (default 1: latency regime)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--draft-device", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-ar", action="store_true", help="skip the autoregressive baseline")
    p.add_argument("--no-chat", action="store_true", help="send prompts as is, without the chat template")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.set_defaults(func=run)


def load_prompts(path: str | None, n: int) -> list[str]:
    if path is None:
        from ..distill.prompts import HELDOUT_PROMPTS
        return HELDOUT_PROMPTS[:n]
    prompts = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        text = item if isinstance(item, str) else item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text:
            raise ValueError(f"{path}:{i}: expected a JSON string or an object with a \"prompt\" string")
        prompts.append(text)
    return prompts[:n]


def decode_all(llm, prompts: list[str], temp: float, k: int | None, args, chat: bool) -> tuple[dict, int, float]:
    """Decode every prompt (``args.batch`` at a time); returns the metric counters' deltas, tokens, seconds."""
    from .. import SamplingParams
    before = llm.metrics.summary()
    tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(prompts), args.batch):
        chunk = prompts[i: i + args.batch]
        params = [SamplingParams(temperature=temp, max_tokens=args.max_tokens, seed=args.seed + i + j, chat=chat,
                                 num_draft_tokens=k) for j in range(len(chunk))]
        tokens += sum(len(o.token_ids) for o in llm.generate(chunk, params))
    seconds = time.perf_counter() - t0
    after = llm.metrics.summary()
    delta = {c: after[c] - before[c] for c in COUNTERS}
    if k is not None:
        full = after["tokens_per_round_hist"].get(k + 1, 0) - before["tokens_per_round_hist"].get(k + 1, 0)
        delta["rejections"] = delta["rounds"] - full
    return delta, tokens, seconds


def _warm_up(llm, prompts, chat, args, temp: float, k: int | None = None):
    """One untimed batch of the timed shapes: CUDA graphs are captured per K, sampler (greedy or not),
    batch bucket and KV bucket, so each (temperature, K) gets its own warm-up; otherwise its first
    timed requests pay the captures (seen on an H200: 0.5x-1.3x AR for one draft across K)."""
    from .. import SamplingParams
    chunk = prompts[: max(args.batch, 1)]
    llm.generate(chunk, [SamplingParams(temperature=temp, max_tokens=args.max_tokens, seed=args.seed, chat=chat,
                                        num_draft_tokens=k) for _ in chunk])


def run(args) -> int:
    from .. import LLM
    prompts = load_prompts(args.prompts, args.num_prompts)
    if not prompts:
        raise ValueError("no prompts to measure on")
    common = dict(device=args.device, dtype=args.dtype, max_batch_size=max(args.batch, 1), seed=args.seed)
    ar_speed: dict[float, float] = {}
    if not args.no_ar:
        with LLM(args.target, mode="ar", **common) as llm:
            chat = llm.tokenizer.chat_template is not None and not args.no_chat
            for temp in args.temp:
                _warm_up(llm, prompts, chat, args, temp)
                _, tokens, seconds = decode_all(llm, prompts, temp, None, args, chat)
                ar_speed[temp] = tokens / seconds
    rows = []
    for draft in [d for d in args.draft.split(",") if d]:
        try:
            llm = LLM(args.target, draft=draft, mode=args.mode, k=max(args.k), draft_device=args.draft_device,
                      **common)
        except (ValueError, NotImplementedError) as e:     # e.g. ngram in mode async: skip, measure the rest
            print(f"skipping draft {draft!r}: {e}", file=sys.stderr)
            continue
        with llm:
            chat = llm.tokenizer.chat_template is not None and not args.no_chat
            for temp in args.temp:
                for k in args.k:
                    _warm_up(llm, prompts, chat, args, temp, k)
                    c, tokens, seconds = decode_all(llm, prompts, temp, k, args, chat)
                    rows.append(Row(draft, args.mode, temp, k,
                                    alpha=_ratio(c["accepted"], c["accepted"] + c["rejections"]),
                                    accept_rate=_ratio(c["accepted"], c["drafted"]),
                                    tokens_per_round=_ratio(c["spec_tokens"], c["rounds"]),
                                    hit_rate=c["cache_hits"] / c["cache_lookups"] if c["cache_lookups"] else None,
                                    tok_s=tokens / seconds, ar_tok_s=ar_speed.get(temp), tokens=tokens))
                    log.info("%s", rows[-1])
    print(format_table(rows, args, len(prompts)))
    if args.json:
        Path(args.json).write_text(json.dumps([{**asdict(r), "acceptance_rate": r.accept_rate, "tau": r.tokens_per_round}
                                               for r in rows], indent=2) + "\n")
    return 0


def format_table(rows: list[Row], args, num_prompts: int) -> str:
    show_hit = any(r.hit_rate is not None for r in rows)
    head = ["draft", "mode", "temp", "K", "acc.rate", "tau", "alpha"] + (["hit rate"] if show_hit else []) + \
           ["tok/s", "AR tok/s", "speedup"]
    body = []
    for r in rows:
        cells = [r.draft, r.mode, f"{r.temp:g}", str(r.k), f"{r.accept_rate:.3f}", f"{r.tokens_per_round:.2f}",
                 f"{r.alpha:.3f}"]
        if show_hit:
            cells.append("-" if r.hit_rate is None else f"{r.hit_rate:.2f}")
        cells += [f"{r.tok_s:.1f}", "-" if r.ar_tok_s is None else f"{r.ar_tok_s:.1f}",
                  "-" if not r.ar_tok_s else f"{r.tok_s / r.ar_tok_s:.2f}x"]
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    title = (f"target {args.target} | {num_prompts} held-out prompts x {args.max_tokens} tokens | batch {args.batch} | "
             f"{args.device} {args.dtype}")
    legend = ("acc.rate = accepted / drafted tokens; tau = mean accepted length = tokens committed per target "
              "forward; alpha = per-token acceptance")
    return "\n".join([title, line(head), line(["-" * w for w in widths])] + [line(b) for b in body] + [legend])
