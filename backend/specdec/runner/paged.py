"""Model runners: turn a list of per-sequence :class:`Feed` s into one forward and its logits.

A runner owns a model and that model's KV state; the scheduler owns sequences. Both runner
kinds follow one rule: feeding a sequence at storage position ``start`` discards whatever it
had cached at ``>= start`` (rollback by length, no copy). ``truncate`` does the same without a
forward and returns freed space to the pool.

* :class:`PagedRunner` (native Llama family): one paged KV pool, a :class:`BlockManager`, all
  feeds of a step batched into one forward. With tensor parallelism (``tp``) it is rank 0's
  runner: its KV pool holds this rank's KV heads, and each forward goes to the worker ranks as
  one broadcast message (tp_step.py) before every rank runs it.
* :class:`~specdec.runner.hf.HFRunner` (any ``AutoModelForCausalLM``): the model's own
  ``DynamicCache`` per sequence, rolled back with ``crop``.
"""
from __future__ import annotations

import logging
import numpy as np
import torch

from ..layers import cpu_linear
from ..layers.attention import build_context
from ..transfer import upload
from .block_manager import BlockManager
from .feed import DeviceTokens, Feed, place_device_tokens, run_epilogue

log = logging.getLogger(__name__)


class PagedRunner:
    def __init__(self, model, device: torch.device, dtype: torch.dtype, block_size: int, num_blocks: int,
                 max_model_len: int, name: str = "target", tp=None):
        a = model.arch
        self.model, self.device, self.dtype, self.name = model, device, dtype, name
        self.tp = tp                          # tp_step.StepChannel of a tensor-parallel rank; None: one device
        self.vocab_size = a.vocab_size
        self.max_model_len = max_model_len
        self.blocks = BlockManager(num_blocks, block_size)
        shape = (model.num_layers, 2, num_blocks + 1, block_size, a.num_kv_heads, a.head_dim)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)     # block num_blocks = sentinel
        self.kv_caches = list(self.kv.unbind(0))
        if device.type == "cpu":              # the linears' weights packed once for oneDNN (layers/cpu_linear.py)
            cpu_linear.pack_linears(model)
        self.graph = None
        self.attn_backend = "sdpa"           # the attention setting: set by runner/setup.py
        self.eager_fallbacks: dict[str, int] = {}
        log.info("%s KV cache: %d blocks x %d tokens (%.1f MiB) on %s", name, num_blocks, block_size,
                 self.kv.numel() * self.kv.element_size() / 2**20, device)

    # --- capacity -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.blocks.num_free

    def can_hold(self, needs: dict[int, int]) -> bool:
        return self.blocks.can_hold(needs)

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        self.blocks.truncate(seq_id, num_tokens)

    def free(self, seq_id: int) -> None:
        self.blocks.free(seq_id)

    def enable_graphs(self, max_batch: int, max_q: int, capture: bool = True) -> None:
        """Run decode-shaped steps (<= max_q queries per row) as padded static-buffer forwards,
        replayed from CUDA graphs when ``capture`` (on CUDA); see cuda_graphs.py."""
        from .cuda_graphs import GraphRunner
        if self.tp is not None and self.tp.leader:        # the workers build the same runner now
            from .tp_step import Graphs
            self.tp.send(Graphs(max_batch, max_q, capture))
        self.graph = GraphRunner(self, max_batch, max_q, capture)

    # --- forward --------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, feeds: list[Feed], device_tokens: DeviceTokens | None = None, epilogue=None,
                hidden: bool = False):
        """Run all feeds in one forward; returns float32 logits [sum(num_logits), V] in feed order, or
        with ``epilogue`` its output over the logits padded to [B, Q, V] (inside the CUDA graph when the
        step has one; see runner/cuda_graphs.py).

        device_tokens = (tensor [B, Qd], col0): feed b's tokens from column col0 on are read from
        row b of that device tensor (its host list holds placeholders), so a caller can feed
        tokens sampled on the device without a host sync.

        hidden (hook for the EAGLE drafter): returns (the above, [hidden [len(feeds[b].tokens), H] per
        feed]), the final normed hidden state of every fed token, in tensors no later forward overwrites."""
        if hidden and self.tp is not None:
            raise NotImplementedError("hidden states (EAGLE drafts) from a tensor-parallel target")
        if self.graph is not None:
            if self.graph.fits(feeds):
                return self.graph.forward(feeds, device_tokens, epilogue, hidden)
            if max(len(f.tokens) for f in feeds) <= self.graph.max_q:   # decode-shaped, yet eager
                reason = "custom attention mask" if any(f.mask is not None for f in feeds) else "batch above the largest bucket"
                if reason not in self.eager_fallbacks:
                    log.warning("%s: decode step runs eagerly (%s)", self.name, reason)
                self.eager_fallbacks[reason] = self.eager_fallbacks.get(reason, 0) + 1
        bs = self.blocks.block_size
        ids, pos, slots, logit_rows = [], [], [], []
        q_lens, kv_lens, q_starts, tables, masks = [], [], [], [], []
        row = 0
        for f in feeds:
            n = len(f.tokens)
            end = f.start + n
            if f.dummy:          # one query at the sentinel slot, attending to itself only
                table, p, end = [self.blocks.num_blocks], np.zeros(n, dtype=np.int64), n
                slots.append(np.full(n, self.blocks.sentinel_slot, dtype=np.int64))
            else:
                if end > self.max_model_len:
                    raise ValueError(f"sequence {f.seq_id}: {end} tokens exceed max_model_len={self.max_model_len}")
                table = self.blocks.ensure(f.seq_id, end)
                p = np.arange(f.start, end)
                slots.append(np.asarray(table, dtype=np.int64)[p // bs] * bs + p % bs)
            ids.append(np.asarray(f.tokens, dtype=np.int64))
            pos.append(p if f.positions is None else np.asarray(f.positions, dtype=np.int64))
            logit_rows.append(np.arange(row + n - f.num_logits, row + n))
            row += n
            q_lens.append(n)
            kv_lens.append(end)
            q_starts.append(0 if f.dummy else f.start)
            tables.append(table)
            masks.append(f.mask)
        if self.tp is not None:
            logits = self._forward_tp(feeds, device_tokens, ids, pos, slots, logit_rows, q_lens, kv_lens, q_starts,
                                      tables, masks)
            return logits if epilogue is None else run_epilogue(logits, feeds, device_tokens, epilogue)
        slot_mapping = torch.from_numpy(np.concatenate(slots))
        ctx = build_context(q_lens, kv_lens, q_starts, tables, slot_mapping, bs, self.device, masks, self.attn_backend)
        input_ids = upload(np.concatenate(ids), self.device)
        if device_tokens is not None:
            place_device_tokens(input_ids, feeds, device_tokens)
        positions = upload(np.concatenate(pos), self.device)
        index = np.concatenate(logit_rows)
        logits_index = None if len(index) == row else upload(index, self.device)
        if len(index) == 0:
            logits_index = torch.zeros(0, dtype=torch.int64, device=self.device)
        out = self.model(input_ids, positions, ctx, self.kv_caches, logits_index, return_hidden=hidden)
        logits, h = out if hidden else (out, None)
        result = logits if epilogue is None else run_epilogue(logits, feeds, device_tokens, epilogue)
        return (result, list(h.split(q_lens))) if hidden else result

    def _forward_tp(self, feeds, device_tokens, ids, pos, slots, logit_rows, q_lens, kv_lens, q_starts, tables, masks):
        """Rank 0 of a tensor-parallel target: broadcast the forward's arrays, then run it like the workers."""
        from .tp_step import eager_forward, pack_eager
        if any(m is not None for m in masks):
            raise NotImplementedError("custom attention masks (tree decode) are not supported by a tensor-parallel model")
        msg, payload = pack_eager(*(np.concatenate(x) for x in (ids, pos, slots, logit_rows)), q_lens, kv_lens,
                                  q_starts, tables, self.blocks.block_size, self.attn_backend)
        place = None
        if device_tokens is not None:
            place = lambda dev: place_device_tokens(dev[: msg.tokens], feeds, device_tokens)  # noqa: E731
        host, dev = self.tp.send(msg, payload, place)
        return eager_forward(self, msg, host, dev)
