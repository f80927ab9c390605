"""Generic runner for any Hugging Face ``AutoModelForCausalLM`` (GPT-2 style models).

Each sequence keeps the model's own ``DynamicCache``. Rollback is ``cache.crop``, which
slices the cached tensors to a shorter length (views, no copy). Sequences run one after the
other inside a step: this path favours compatibility; the native runner is the fast one.
Capacity is counted in tokens against ``max_tokens_cached`` so the scheduler can treat both
runners alike.
"""
from __future__ import annotations

import torch

from .feed import Feed, run_epilogue


class HFRunner:
    def __init__(self, model, device: torch.device, max_model_len: int, max_tokens_cached: int, name: str = "target"):
        from transformers import DynamicCache
        self._new_cache = DynamicCache
        self.model, self.device, self.name = model, device, name
        self.vocab_size = model.config.vocab_size
        self.max_model_len = max_model_len
        self.capacity = max_tokens_cached
        self.caches: dict[int, object] = {}
        self.lengths: dict[int, int] = {}
        self.reserved: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return self.capacity - sum(self.reserved.values())

    def can_hold(self, needs: dict[int, int]) -> bool:
        extra = sum(max(0, n - self.reserved.get(s, 0)) for s, n in needs.items())
        return extra <= self.num_free_blocks

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        cache = self.caches.get(seq_id)
        if cache is None:
            return
        have = cache.get_seq_length()
        if have > num_tokens:
            cache.crop(num_tokens - have)      # negative: remove that many tokens from the end
        self.reserved[seq_id] = min(self.reserved.get(seq_id, 0), num_tokens)

    def free(self, seq_id: int) -> None:
        self.caches.pop(seq_id, None)
        self.reserved.pop(seq_id, None)

    @torch.inference_mode()
    def forward(self, feeds: list[Feed], device_tokens=None, epilogue=None) -> torch.Tensor:
        logits = self._forward(feeds, device_tokens)
        return logits if epilogue is None else run_epilogue(logits, feeds, device_tokens, epilogue)

    def _forward(self, feeds: list[Feed], device_tokens=None) -> torch.Tensor:
        out = []
        for b, f in enumerate(feeds):
            if f.dummy:                        # placeholder row: no cache is touched
                out.append(torch.zeros((f.num_logits, self.vocab_size), device=self.device))
                continue
            if f.mask is not None or f.positions is not None:
                raise NotImplementedError("the generic HF path has no custom masks or positions (tree decode)")
            end = f.start + len(f.tokens)
            if end > self.max_model_len:
                raise ValueError(f"sequence {f.seq_id}: {end} tokens exceed max_model_len={self.max_model_len}")
            cache = self.caches.get(f.seq_id)
            if cache is None:
                if f.start != 0:
                    raise RuntimeError(f"sequence {f.seq_id}: no cache to continue at position {f.start}")
                cache = self.caches[f.seq_id] = self._new_cache()
            self.truncate(f.seq_id, f.start)
            have = cache.get_seq_length()
            if have != f.start:
                raise RuntimeError(f"sequence {f.seq_id}: cache holds {have} tokens, feed starts at {f.start}")
            ids = torch.tensor([f.tokens], dtype=torch.long, device=self.device)
            if device_tokens is not None:
                dt, col0 = device_tokens
                ids[0, col0:] = dt[b, : len(f.tokens) - col0]
            pos = torch.arange(f.start, end, device=self.device)[None]
            logits = self.model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True).logits[0]
            self.reserved[f.seq_id] = max(self.reserved.get(f.seq_id, 0), end)
            if f.num_logits:
                out.append(logits[len(f.tokens) - f.num_logits:].float())
        if not out:
            return torch.zeros((0, self.vocab_size), device=self.device)
        return torch.cat(out)
