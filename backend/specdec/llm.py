"""The public API: ``LLM(...)``, ``SamplingParams``, ``llm.generate`` and ``llm.stream``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .config import CacheConfig, EngineConfig, SamplingParams, SpecConfig
from .engine.engine import LLMEngine
from .engine.sequence import Sequence
from .models.registry import ALIASES


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


def _default_mode(mode, draft):
    return mode if mode is not None else ("sync" if draft is not None else "ar")


class LLM:
    """Speculative-decoding LLM.

    target: alias (``smollm2-135m``), HF folder or .gguf file. draft: None, a folder/alias,
    ``self:N`` (target's first N layers) or ``ngram``. mode: "ar", "sync" or "async" (default:
    "sync" when a draft is given, else "ar"). With ``mode="sync"`` and no draft, the target's
    default draft is used when the alias names one.

    ``mode="async"`` is SSD: the draft runs in a worker process on ``draft_device`` (started
    here, ended by :meth:`close` or ``with LLM(...) as llm``). ``draft="remote:tcp://HOST:PORT"``
    uses a worker started elsewhere (e.g. the Triton ``draft`` model); until it joins, and after
    a channel failure, the engine decodes autoregressively. SSD options (``fan_out``,
    ``fan_out_hit``, ``fan_out_miss``, ``fan_out_budget``, ``sampler_x``, ``backup``) go through
    ``**spec_kwargs`` to :class:`~specdec.config.SpecConfig`.

    ``tensor_parallel_size=N`` splits a native Llama-family target over N devices (``devices``, one
    per rank; default: N GPUs from ``device`` on, or N CPU ranks over Gloo). This process is rank
    0 and starts the others; :meth:`close` ends them. The draft stays whole, on ``draft_device``.
    """

    def __init__(self, target: str = "smollm2-135m", draft: str | None = None, mode: str | None = None,
                 k: int = 4, device: str | None = None, draft_device: str | None = None, dtype: str = "float32",
                 max_batch_size: int = 16, seed: int = 0, max_model_len: int | None = None,
                 draft_kv_append: bool = True, impl: str = "auto", block_size: int | None = None,
                 num_kv_blocks: int | None = None, kv_cache_memory_gib: float | None = None,
                 eager: bool = False, attention: str = "auto", tensor_parallel_size: int = 1,
                 devices: list[str] | None = None, **spec_kwargs):
        mode = _default_mode(mode, draft)
        device = device or (devices[0] if devices else "cpu")
        if mode != "ar" and draft is None and target in ALIASES:
            draft = ALIASES[target].default_draft
        cache = CacheConfig(block_size=block_size or 16, num_blocks=num_kv_blocks, memory_gib=kv_cache_memory_gib)
        spec = SpecConfig(draft=draft, k=k, draft_kv_append=draft_kv_append, **spec_kwargs)
        self.config = EngineConfig(target=target, mode=mode, device=device, draft_device=draft_device, dtype=dtype,
                                   max_batch_size=max_batch_size, max_model_len=max_model_len, seed=seed,
                                   impl=impl, eager=eager, attention=attention, tensor_parallel_size=tensor_parallel_size,
                                   devices=devices, cache=cache, spec=spec)
        self.engine = LLMEngine(self.config)
        self.tokenizer = self.engine.tokenizer

    # --- prompts ------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        if isinstance(prompt, str):
            if params.chat:
                return list(self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True,
                    return_dict=False))
            return self.tokenizer.encode(prompt)
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

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
