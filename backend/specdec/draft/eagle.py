"""The EAGLE drafter: draft tokens from the target's hidden states with an EAGLE head (models/eagle.py).

Which modes it serves: **sync, in the engine's process, on the target's device** only. It reads the
target's final hidden states after every target forward, so it cannot run in SSD's draft worker
(mode "async" / ``remote:``), whose channel carries token ids only; nor with a tensor-parallel or
generic (HF) target.

What the engine gives it (``wants_hidden``): after each target forward that commits tokens, the
features (final normed hidden states) of the committed positions, through :meth:`observe`:

* prefill: every fed position (the prompt, or the committed tokens of a resumed sequence);
* a decode round: positions len-1 .. len-1+accepted of the verify feed [last, d1..dK] (a plain
  row: its one position).

Per sequence it keeps one slot of the head's dense KV cache, ``done`` (positions < done hold K/V
computed from the target's features) and the pending features from ``done`` on. A proposal runs
the head over the pending positions (catch-up: input (f_j, x_{j+1}) for j = done .. len-2), then
K - 1 more steps that feed the head's own output back; afterwards done = len - 1. The K/V written
at draft positions is stale once the round is verified: the next observe starts at len_old - 1,
and the catch-up rewrites from there (positions past a row's length are masked, never read).

The K steps run as one padded program (fixed shapes), captured as a CUDA graph per (batch bucket,
catch-up length, K, KV bucket, sampler) when graphs are on and the catch-up is short; otherwise the
same program runs eagerly (and always on CPU).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..layers.sampling import SamplingRows, fit_vocab
from ..models.eagle import EagleCache, EagleHead
from ..runner.graph_tools import batch_buckets, capture, kv_bucket, pad_rows
from ..transfer import upload
from .base import Drafter, Proposal
from .loop import LoopSampler

log = logging.getLogger(__name__)



@dataclass
class _Row:
    slot: int
    done: int = 0                                            # positions < done: K/V from the target's features
    pending: list[torch.Tensor] = field(default_factory=list)   # features of positions done, done + 1, ...

    @property
    def num_pending(self) -> int:
        return sum(len(t) for t in self.pending)


class EagleDrafter(Drafter):
    """head: an :class:`EagleHead` attached to the target's embedding and LM head; max_batch: sequences
    at once (cache slots); max_len: the longest sequence (max_model_len); k_max: the most drafts per
    round; vocab_size: the target's (q's columns); graphs: "capture", "padded" or None."""

    wants_hidden = True

    def __init__(self, head: EagleHead, max_batch: int, max_len: int, k_max: int, vocab_size: int,
                 device: torch.device, dtype: torch.dtype, graphs: str | None = None):
        self.head, self.device, self.vocab_size = head, torch.device(device), vocab_size
        self.cache = EagleCache(head.arch, max_batch, max_len + k_max + 2, self.device, dtype)
        self.rows: dict[int, _Row] = {}
        self._free = list(range(max_batch - 1, -1, -1))
        self.capture = graphs == "capture" and self.device.type == "cuda"
        self.max_q = k_max + 1                   # catch-ups up to this long are captured
        self.buckets = batch_buckets(max_batch)
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.replays = 0
        log.info("EAGLE head: %d layer(s), KV cache %.1f MiB on %s, graphs %s", head.arch.num_layers,
                 self.cache.nbytes() / 2**20, self.device, "captured" if self.capture else "off")

    # --- the features ---------------------------------------------------------------------------
    def _row(self, seq) -> _Row:
        row = self.rows.get(seq.seq_id)
        if row is None:
            if not self._free:
                raise RuntimeError("EAGLE drafter: more running sequences than cache slots (max_batch_size)")
            row = self.rows[seq.seq_id] = _Row(self._free.pop())
        return row

    def observe(self, seq, start: int, hidden: torch.Tensor) -> None:
        """The target's features of positions start .. start + len(hidden) - 1 (hidden [n, H], a tensor
        the caller will not overwrite)."""
        row = self._row(seq)
        if start < row.done:                       # recomputed from earlier on (e.g. re-prefill)
            row.done, row.pending = start, []
        have = row.done + row.num_pending
        if start < have:                           # a rollback inside the pending features
            kept = torch.cat(row.pending)[: start - row.done] if row.pending else None
            row.pending = [kept] if kept is not None and len(kept) else []
        elif start > have:
            raise RuntimeError(f"EAGLE drafter: sequence {seq.seq_id} got features from position {start}, "
                               f"but has them only up to {have - 1} (a target forward was not observed)")
        row.pending.append(hidden)

    # --- Drafter ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, seqs, ks: list[int], sampling: SamplingRows) -> Proposal:
        dev = self.device
        B, K = len(seqs), max(ks)
        if sampling.all_greedy:
            sampler = LoopSampler(greedy=True)
        else:
            sampler = LoopSampler(False, sampling.temperature.to(dev), sampling.top_k.to(dev), sampling.top_p.to(dev),
                                  sampling.uniforms_per_row(ks, K).to(dev), sampling.filtered, sampling.any_greedy)
        rows, feats, lens = [], [], []
        for b, s in enumerate(seqs):
            if ks[b] == 0:
                rows.append(None)
                lens.append(1)
                continue
            row = self._row(s)
            n = len(s)
            if row.done + row.num_pending != n - 1 or not row.pending:
                raise RuntimeError(f"EAGLE drafter: sequence {s.seq_id} has features up to position "
                                   f"{row.done + row.num_pending - 1}, needs them up to {n - 2}")
            rows.append(row)
            f = row.pending[0] if len(row.pending) == 1 else torch.cat(row.pending)
            feats.append(f)
            lens.append(len(f))
        Q0 = max(lens)
        Bb = next((x for x in self.buckets if x >= B), B)
        use_graph = self.capture and Q0 <= self.max_q
        need = max((len(s) - 2 + K + 1 for s, r in zip(seqs, rows) if r is not None), default=1)
        kv = self._kv_bucket(need) if use_graph else min(need, self.cache.max_len)
        ints = self._layout(seqs, rows, Bb, Q0, K)
        H = self.head.arch.hidden_size
        pieces = []
        for b in range(Bb):                       # [Bb * Q0, H]: each row's features, zero-padded
            f = feats.pop(0) if b < B and rows[b] is not None else None
            m = 0 if f is None else len(f)
            if f is not None:
                pieces.append(f)
            if Q0 - m:
                pieces.append(torch.zeros((Q0 - m, H), device=dev, dtype=self.cache.layers[0][0].dtype))
        feat_pad = torch.cat(pieces)
        key = (Bb, Q0, K, kv, sampler.key())
        if use_graph:
            tokens, probs = self._replay(key, ints, feat_pad, sampler)
        else:
            tokens, probs = self._program(Bb, Q0, K, kv, upload(ints, dev),
                                          feat_pad, sampler.bind([pad_rows(t, Bb) for t in sampler.tensors()]))
        for s, row in zip(seqs, rows):
            if row is not None:
                row.done, row.pending = len(s) - 1, []
        return Proposal(tokens[:B], None if probs is None else probs[:B], list(ks))

    def commit(self, seq, old_len: int, accepted: int, num_draft: int, in_flight: bool = False) -> None:
        """Nothing to do: the next :meth:`observe` starts at old_len - 1 and the catch-up rewrites from there."""

    def free(self, seq) -> None:
        row = self.rows.pop(seq.seq_id, None)
        if row is not None:
            self._free.append(row.slot)

    def needs(self, seq, k: int) -> int:
        return 0                                   # the head's cache is its own (one slot per sequence)

    # --- the padded program -------------------------------------------------------------------------
    def _kv_bucket(self, n: int) -> int:
        return kv_bucket(n, 1, self.cache.max_len)

    def _layout(self, seqs, rows, Bb: int, Q0: int, K: int) -> np.ndarray:
        """One int64 array: ids, pos, wslot, qpos [Bb, Q0]; rslot, last [Bb]; later pos [K - 1, Bb]."""
        sentinel = self.cache.sentinel
        ids = np.zeros((Bb, Q0), dtype=np.int64)
        pos = np.zeros((Bb, Q0), dtype=np.int64)
        wslot = np.full((Bb, Q0), sentinel, dtype=np.int64)
        rslot = np.full(Bb, sentinel, dtype=np.int64)
        last = np.arange(Bb, dtype=np.int64) * Q0
        later = np.zeros((max(K - 1, 0), Bb), dtype=np.int64)
        for b, (s, row) in enumerate(zip(seqs, rows)):
            if row is None:
                continue
            n = len(s)
            m = n - 1 - row.done                       # catch-up positions done .. n - 2
            ids[b, :m] = s.token_ids[row.done + 1: n]
            pos[b, :m] = np.arange(row.done, n - 1)
            wslot[b, :m] = row.slot
            rslot[b] = row.slot
            last[b] = b * Q0 + m - 1
            later[:, b] = np.arange(n - 1, n - 2 + K)
        return np.concatenate([ids.ravel(), pos.ravel(), wslot.ravel(), pos.ravel(), rslot, last, later.ravel()])

    def _program(self, Bb: int, Q0: int, K: int, kv: int, ints: torch.Tensor, feats: torch.Tensor, sampler):
        """K draft steps: tokens [Bb, K], q [Bb, K, V] or None. ``ints``: :meth:`_layout` on the device."""
        m = Bb * Q0
        ids, pos, wslot, qpos = (ints[i * m:(i + 1) * m] for i in range(4))
        rslot, last = ints[4 * m: 4 * m + Bb], ints[4 * m + Bb: 4 * m + 2 * Bb]
        later = ints[4 * m + 2 * Bb:].view(max(K - 1, 0), Bb)
        head, cache = self.head, self.cache
        g = head.forward_cached(ids, feats, pos, wslot, qpos.view(Bb, Q0), rslot, kv, cache)[last]   # [Bb, H]
        toks, qs = [], []
        for i in range(K):
            if i > 0:
                p = later[i - 1]
                g = head.forward_cached(toks[-1], g, p, rslot, p.view(Bb, 1), rslot, kv, cache)
            tok, q = sampler.sample(fit_vocab(head.logits(g, self.vocab_size), self.vocab_size), i)
            toks.append(tok)
            qs.append(q)
        return torch.stack(toks, 1), (None if qs[0] is None else torch.stack(qs, 1))

    # --- CUDA graphs ---------------------------------------------------------------------------------
    def _replay(self, key, ints: np.ndarray, feats: torch.Tensor, sampler):
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(key, len(ints), feats, sampler)
            if entry is None:                  # capture failed: this key runs eagerly from now on
                self.capture = False
                Bb, Q0, K, kv, _ = key
                return self._program(Bb, Q0, K, kv, upload(ints, self.device), feats,
                                     sampler.bind([pad_rows(t, Bb) for t in sampler.tensors()]))
        graph, out, s_ints, s_feats, s_samp, staging = entry
        staging.numpy()[:] = ints
        s_ints.copy_(staging, non_blocking=True)
        s_feats.copy_(feats)
        for dst, src in zip(s_samp, sampler.tensors()):
            dst.copy_(pad_rows(src, key[0]), non_blocking=True)
        graph.replay()
        self.replays += 1
        return out

    def _capture(self, key, n_ints: int, feats: torch.Tensor, sampler):
        Bb, Q0, K, kv, _ = key
        dev = self.device
        staging = torch.zeros(n_ints, dtype=torch.long, pin_memory=True)
        s_ints = torch.zeros(n_ints, dtype=torch.long, device=dev)
        s_feats = torch.zeros_like(feats)
        s_samp = [pad_rows(t, Bb).clone() for t in sampler.tensors()]
        bound = sampler.bind(s_samp)
        program = lambda: self._program(Bb, Q0, K, kv, s_ints, s_feats, bound)   # noqa: E731
        # the warm-up and capture write K/V at the sentinel slot only (all-zero ints: every row is padding)
        s_ints.fill_(0)
        s_ints[2 * Bb * Q0: 3 * Bb * Q0].fill_(self.cache.sentinel)
        s_ints[4 * Bb * Q0: 4 * Bb * Q0 + Bb].fill_(self.cache.sentinel)
        try:
            graph, out = capture(program, dev, self.pool)
        except Exception as e:                 # noqa: BLE001 - logged, then eager: never silent
            log.warning("EAGLE drafter: CUDA graph capture of %s failed (%s); drafting eagerly", key[:4], e)
            return None
        self.pool = graph.pool()
        entry = self.graphs[key] = (graph, out, s_ints, s_feats, s_samp, staging)
        log.info("EAGLE drafter: captured CUDA graph %s (%d graphs)", key[:4], len(self.graphs))
        return entry



def build_eagle_drafter(folder, ctx) -> EagleDrafter:
    """The drafter for the EAGLE head in ``folder``, for the engine described by ``ctx``
    (:class:`~specdec.draft.slot.DraftContext`): sync mode, the target's device, a native target."""
    from ..config import MAX_K
    from ..models.eagle import load_eagle
    from ..models.loader import DTYPES
    from ..runner.setup import graph_mode
    from .load import check_vocab
    cfg, target = ctx.config, ctx.target
    if target.kind != "native":
        raise ValueError(f"EAGLE head {folder}: needs a native Llama-family target (it reads the target's hidden "
                         f"states); {cfg.target} runs on the generic HF path")
    if cfg.tensor_parallel_size > 1:
        raise ValueError(f"EAGLE head {folder}: not supported with tensor_parallel_size={cfg.tensor_parallel_size}")
    if ctx.draft_device != ctx.device:
        raise ValueError(f"EAGLE head {folder}: runs on the target's device ({ctx.device}), not {ctx.draft_device}")
    check_vocab(ctx.tokenizer, draft_folder=folder)
    dtype = DTYPES[cfg.dtype]
    head = load_eagle(folder, target.module, ctx.device, dtype)
    return EagleDrafter(head, cfg.max_batch_size, cfg.max_model_len, MAX_K, ctx.vocab_size, ctx.device, dtype,
                        graph_mode(cfg, ctx.device))
