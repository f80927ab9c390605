"""Training text: the target's own completions of the built-in prompts, and the batches cut from them.

The corpus is generated once per output folder with specdec's engine (mode "ar", batched):
for every prompt one greedy completion (the trajectories temperature-0 decoding follows) and
``samples`` completions at temperature 1 (the target's distribution). The prompts are the
built-in TRAIN set plus, with ``invent``, user requests the target writes itself (more topics
than any fixed list, so the draft overfits less). It is saved with the
settings that produced it, so a resumed run reuses it instead of generating it again.
"""
from __future__ import annotations

import gc
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import DistillConfig
from .prompts import HELDOUT_PROMPTS, TRAIN_PROMPTS, synthetic_prompts

log = logging.getLogger(__name__)

MIN_COMPLETION = 8     # prompts longer than seq_len - MIN_COMPLETION tokens are skipped


@dataclass
class Corpus:
    sequences: list[list[int]]          # prompt + completion token ids, each <= seq_len
    prompt_lens: list[int]              # loss covers the positions that predict the completion
    settings: dict = field(default_factory=dict)
    gen_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(s) - p for s, p in zip(self.sequences, self.prompt_lens))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"sequences": self.sequences, "prompt_lens": self.prompt_lens, "settings": self.settings,
                    "gen_seconds": self.gen_seconds}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Corpus":
        d = torch.load(path, weights_only=True)
        return cls(d["sequences"], d["prompt_lens"], d["settings"], d.get("gen_seconds", 0.0))


def corpus_settings(cfg: DistillConfig) -> dict:
    """What the corpus depends on; a saved corpus is reused only when these match."""
    return {"target": cfg.target, "num_prompts": cfg.num_prompts, "samples": cfg.samples, "invent": cfg.invent,
            "synth_prompts": cfg.synth_prompts, "seq_len": cfg.seq_len, "seed": cfg.seed, "prompts": len(TRAIN_PROMPTS)}


def training_prompts(cfg: DistillConfig) -> list[str]:
    """The built-in TRAIN prompts (or ``num_prompts`` of them) and ``synth_prompts`` templated ones."""
    if cfg.num_prompts is None or cfg.num_prompts >= len(TRAIN_PROMPTS):
        texts = list(TRAIN_PROMPTS)
    else:
        texts = random.Random(cfg.seed).sample(TRAIN_PROMPTS, cfg.num_prompts)
    if cfg.synth_prompts:
        texts += synthetic_prompts(cfg.synth_prompts, cfg.seed)
    return texts


def load_or_generate(cfg: DistillConfig, path: Path, report=log.info) -> Corpus:
    settings = corpus_settings(cfg)
    if path.exists():
        corpus = Corpus.load(path)
        if corpus.settings == settings:
            report(f"reusing the corpus in {path} ({len(corpus)} sequences, "
                   f"{corpus.num_completion_tokens / 1e3:.0f}k completion tokens)")
            return corpus
        log.warning("the corpus in %s was made with other settings; generating a new one", path)
    corpus = generate_corpus(cfg, report)
    corpus.settings = settings
    corpus.save(path)
    return corpus


def generate_corpus(cfg: DistillConfig, report=log.info) -> Corpus:
    """Sample the corpus from the target with the engine: every request in flight at once, ``gen_batch``
    decoded together (CUDA graphs on a GPU), in a seeded random order so that a ``gen_time_limit``
    keeps a fair sample of every kind of prompt; sequences cut by the limit are kept as they are
    (a prefix of a target completion is still the target's text)."""
    from .. import LLM, SamplingParams

    block = 16
    t0 = time.perf_counter()
    llm = LLM(cfg.target, mode="ar", device=cfg.device, dtype=cfg.compute_dtype, max_batch_size=cfg.gen_batch,
              max_model_len=cfg.seq_len, block_size=block, seed=cfg.seed,
              num_kv_blocks=cfg.gen_batch * math.ceil((cfg.seq_len + 2) / block) + 1)
    chat = llm.tokenizer.chat_template is not None
    texts = training_prompts(cfg)
    invent_s = 0.0
    if cfg.invent:
        t1 = time.perf_counter()
        texts += invent_prompts(llm, cfg.invent, cfg.seed)
        invent_s = time.perf_counter() - t1
    held = set(HELDOUT_PROMPTS)
    texts = [t for t in dict.fromkeys(texts) if t not in held]       # distinct, never a held-out prompt
    encoded = []
    for text in texts:
        ids = llm.encode(text, SamplingParams(chat=chat))
        if len(ids) <= cfg.seq_len - MIN_COMPLETION:
            encoded.append(ids)
    if not encoded:
        raise ValueError(f"seq_len={cfg.seq_len} is too short for every training prompt "
                         f"(each needs its tokens + {MIN_COMPLETION})")
    requests = []
    for ids in encoded:
        for j in range(cfg.samples + 1):     # j = 0: greedy; then samples at temperature 1 from the engine's
            params = SamplingParams(temperature=0.0 if j == 0 else 1.0, max_tokens=cfg.seq_len - len(ids))
            requests.append((ids, params))   # seeded stream (per-request seeds cost a host draw per row and step)
    random.Random(cfg.seed).shuffle(requests)
    seqs, seconds = _run(llm, requests, "corpus", cfg.gen_time_limit)
    kept = [s for s in seqs if len(s.output_ids) >= MIN_COMPLETION]    # a few tokens teach little
    corpus = Corpus([s.prompt_ids + s.output_ids for s in kept], [len(s.prompt_ids) for s in kept],
                    gen_seconds=seconds)
    written = sum(len(s.output_ids) for s in seqs)
    cut_n = sum(s.finish_reason == "time limit" for s in seqs)
    cut = f" ({cut_n} of {len(requests)} requests cut by the time limit)" if cut_n else ""
    report(f"corpus: {len(corpus)} sequences from {len(encoded)} prompts, {corpus.num_completion_tokens / 1e3:.0f}k "
           f"completion tokens; generation {written / 1e3:.0f}k tokens in {seconds:.1f} s = {written / max(seconds, 1e-9):.0f} "
           f"tok/s at batch {cfg.gen_batch} on {cfg.device} {cfg.compute_dtype}{cut}; prompts invented in {invent_s:.1f} s, "
           f"engine start {time.perf_counter() - t0 - seconds - invent_s:.1f} s")
    llm.close()
    del llm, seqs
    gc.collect()
    if cfg.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return corpus


def invent_prompts(llm, n: int, seed: int, max_tokens: int = 96) -> list[str]:
    """Up to n distinct user requests written by the target itself: the user turn of a chat,
    sampled at temperature 1 from the template's text before the user's message. Requests that
    do not end their turn within max_tokens are dropped. Needs a chat template."""
    from .. import SamplingParams
    tok = llm.tokenizer
    if tok.chat_template is None:
        raise ValueError("invent needs a target with a chat template (the user turn is sampled from it)")
    marker = "\u2063"                                       # invisible separator: not in any real prompt
    text = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    prefix = tok.encode(text[: text.index(marker)], add_special_tokens=False)
    requests = [(prefix, SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=seed * 7_000_003 + i))
                for i in range(n)]
    seqs, _ = _run(llm, requests, "prompts")
    out = [tok.decode(s.output_ids, skip_special_tokens=True).strip() for s in seqs if s.finish_reason == "stop"]
    invented = list(dict.fromkeys(p for p in out if p))
    log.info("invented %d distinct prompts (%d asked)", len(invented), n)
    return invented


def _run(llm, requests: list, desc: str, time_limit: float | None = None) -> tuple[list, float]:
    """Decode (prompt ids, SamplingParams) requests to the end, or until ``time_limit`` seconds (the
    unfinished ones are aborted and keep what they wrote; requests never started are dropped); returns
    the Sequences started and the seconds.

    Requests enter the engine in waves of max_batch_size / 8: a step that admits sequences prefills them
    and decodes nothing (engine.step), so feeding each finished row's successor at once would make
    every other step a prefill (measured at batch 256: 449 prefill steps for 682 decode steps)."""
    eng = llm.engine
    cap = eng.scheduler.max_batch_size
    wave = max(1, cap // 8)
    seqs: list = []
    live = 0

    def add(n: int) -> None:
        nonlocal live
        for ids, params in requests[len(seqs): len(seqs) + n]:
            s = eng.add_request(ids, params)
            s.stream_text = False             # nobody reads text deltas: decode the text once, at the end
            seqs.append(s)
            live += 1

    t0 = time.perf_counter()
    total = sum(p.max_tokens for _, p in requests)
    with tqdm(desc=desc, unit="tok", total=total, dynamic_ncols=True, mininterval=2.0) as bar:
        while len(seqs) < len(requests) or eng.has_unfinished():
            if cap - live >= wave or not eng.has_unfinished():
                add(cap - live)
            outs = eng.step()
            live -= sum(o.finished for o in outs)
            bar.update(sum(len(o.new_token_ids) for o in outs))
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                for s in seqs:
                    eng.abort(s, "time limit")
                break
    return seqs, time.perf_counter() - t0
