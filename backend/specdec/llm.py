"""The public API: ``LLM(...)``, ``SamplingParams``, ``llm.generate`` and ``llm.stream``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .config import EngineConfig, SamplingParams, engine_config
from .engine.engine import LLMEngine
from .engine.sequence import Sequence
from .models.loader import encode_prompt
from .models.registry import draft_and_k


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    stats: dict = field(default_factory=dict)


@dataclass
class StreamChunk:
    token_ids: list[int]       # tokens committed by this round
    text: str                  # text delta (concatenation of deltas == the final text)
    finished: bool
    finish_reason: str | None
    stats: dict


def make_config(target: str | None = None, draft: str | None = None, mode: str | None = None, **options) -> EngineConfig:
    """The EngineConfig for these flat options (config.py), with the target alias's default draft when
    a speculative mode names none, and the draft alias's K when none is given. ``LLM``, ``specdec serve`` and the Triton models build theirs here."""
    if target is not None:
        options["target"] = target
    target = options.get("target", EngineConfig.__dataclass_fields__["target"].default)
    draft, k = draft_and_k(target, mode, draft, options.pop("k", None))
    if k is not None:
        options["k"] = k
    return engine_config(draft=draft, mode=mode, **options)


class LLM:
    """Speculative-decoding LLM.

    target: alias (``smollm2-135m``), HF folder or .gguf file. draft: None, a folder/alias,
    ``self:N`` (target's first N layers) or ``ngram``. mode: "ar", "sync" or "async" (default:
    "sync" when a draft is given, else "ar"). With ``mode="sync"`` and no draft, the target's
    default draft is used when the alias names one.

    ``mode="async"`` is SSD: on the target's device the draft runs in this process (a second CUDA
    stream; ``draft_placement``), on another device in a worker process on ``draft_device`` (started
    here, ended by :meth:`close` or ``with LLM(...) as llm``). ``draft="remote:tcp://HOST:PORT"``
    uses a worker started elsewhere (e.g. the Triton ``draft`` model); until it joins, and after
    a channel failure, the engine decodes autoregressively.

    ``**options`` are any leaves of the config tree by name (specdec/config.py): ``k``, ``device``,
    ``draft_device``, ``dtype``, ``max_batch_size``, ``num_kv_blocks``, ``attention_backend``,
    ``eager``, and the SSD knobs ``fan_out``, ``fan_out_hit``, ``fan_out_miss``, ``fan_out_budget``,
    ``sampler_x``, ``backup``; an unknown name is an error that lists the allowed ones.

    ``tensor_parallel_size=N`` splits a native Llama-family target over N devices (``devices``, one
    per rank; default: N GPUs from ``device`` on, or N CPU ranks over Gloo). This process is rank
    0 and starts the others; :meth:`close` ends them. The draft stays whole, on ``draft_device``.
    """

    def __init__(self, target: str | None = None, draft: str | None = None, mode: str | None = None, **options):
        self.config = make_config(target, draft, mode, **options)
        self.engine = LLMEngine(self.config)
        self.tokenizer = self.engine.tokenizer

    # --- prompts ------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        if isinstance(prompt, str):
            return encode_prompt(self.tokenizer, prompt, params.chat)
        if not isinstance(prompt, (list, tuple)) or not all(isinstance(t, int) for t in prompt):
            raise ValueError("prompt must be a string or a list of token ids")
        return list(prompt)

    def _add(self, prompt, params: SamplingParams) -> Sequence:
        return self.engine.add_request(self.encode(prompt, params), params)

    # --- generation ---------------------------------------------------------------------------
    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params or SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"got {len(plist)} SamplingParams for {len(prompts)} prompts")
        seqs = [self._add(p, sp) for p, sp in zip(prompts, plist)]
        for s in seqs:
            s.stream_text = False          # text is decoded once, at the end
        while any(not s.finished for s in seqs):
            self.engine.step()
        return [self._output(s) for s in seqs]

    def stream(self, prompt, params: SamplingParams | None = None):
        """Yield a :class:`StreamChunk` for every round that commits tokens of this request."""
        seq = self._add(prompt, params or SamplingParams())
        try:
            while not seq.finished:
                for out in self.engine.step():
                    if out.seq is seq and (out.new_token_ids or out.finished):
                        yield StreamChunk(out.new_token_ids, out.text_delta, out.finished, seq.finish_reason,
                                          seq.stats.as_dict())
        finally:
            if not seq.finished:
                self.engine.abort(seq)

    def _output(self, s: Sequence) -> RequestOutput:
        stats = s.stats.as_dict()
        if s.first_token_time is not None:
            stats["ttft_s"] = s.first_token_time - s.arrival
        stats["latency_s"] = time.perf_counter() - s.arrival
        return RequestOutput(s.prompt_ids, list(s.output_ids), s.detok.text, s.finish_reason, stats)

    @property
    def metrics(self):
        return self.engine.metrics

    # --- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """End the worker processes, if any (the draft worker of mode "async", tensor-parallel ranks). Idempotent."""
        self.engine.close()

    def __del__(self):
        """Dropping an LLM frees what close() frees (its draft worker and channel, TP ranks)."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.close()
            except Exception:            # interpreter shutdown: modules may already be gone
                pass

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
