"""The engine side of a remote draft: a drafter that asks a draft worker over a :class:`Channel`.

It implements :class:`~.base.Drafter`, with ``prefill`` sent before the target's own prefill so
the two overlap. The engine's ``step()`` thread is its only user. Host state kept per sequence:

* ``seq.draft_cached``: how many of the sequence's tokens the worker has been told about
  (PREFILL, then each SPECULATE carries ``token_ids[draft_cached:]``);
* whether the next round is the first after PREFILL (outcome key k = -2).

Each proposal carries the rows' RowStatus (hit / JIT / fast), how long the target waited for the
reply and how long the worker's last cache build took; the engine turns them into statistics.

q for verification: sampled rows get the worker's q (HIT / JIT) or the uniform distribution
(FAST: the random tokens really were drawn uniformly, so rejection sampling stays exact);
greedy rows get one-hot q at their tokens.
"""
from __future__ import annotations

import logging
import time

import torch

from ..config import SpecConfig
from ..layers.sampling import SamplingRows
from ..spec.fanout import resolve_fan_out
from ..spec.status import RowStatus
from .base import Drafter, Proposal
from .channel import Channel, ChannelError
from .messages import Config, Exit, Free, Hello, Prefill, Speculate, SpeculateReply

log = logging.getLogger(__name__)

WARN_EVERY_S = 30.0


class RemoteDrafter(Drafter):
    def __init__(self, channel: Channel, spec: SpecConfig, async_mode: bool, vocab_size: int, max_batch_size: int,
                 max_model_len: int, seed: int, device: torch.device):
        self.ch, self.async_mode, self.vocab_size = channel, async_mode, vocab_size
        self.max_batch_size, self.max_model_len, self.seed = max_batch_size, max_model_len, seed
        self.device = torch.device(device)
        self.known: set[int] = set()
        self.fresh: set[int] = set()
        self._frees: list[int] = []
        self._last_reply: float | None = None
        self._window = self._build = None
        self._warned = 0.0
        self.hello: Hello | None = None
        self.configure(spec)

    # --- configuration ----------------------------------------------------------------------
    def configure(self, spec: SpecConfig) -> Hello:
        """Send CONFIG and wait for HELLO; the worker starts over (every sequence is re-prefilled lazily)."""
        self.spec = spec
        hit, miss, fast, geometric = resolve_fan_out(spec)
        cfg = Config(spec.k, self.async_mode, hit, miss, fast, geometric, spec.sampler_x, spec.backup,
                     self.vocab_size, self.max_batch_size, self.max_model_len, self.seed, spec.tree_policy)
        self._frees.clear()
        self.known.clear()
        self.fresh.clear()
        self.ch.send(cfg)
        hello = self.ch.recv()
        if not isinstance(hello, Hello):
            raise ChannelError(f"expected HELLO after CONFIG, got {type(hello).__name__}")
        self.hello = hello
        log.info("remote draft ready: pid %d, vocab %d, KV %d tokens, %s", hello.pid, hello.vocab_size,
                 hello.kv_tokens, cfg)
        return hello

    # --- messages ---------------------------------------------------------------------------
    def _flush_frees(self) -> None:
        if self._frees:
            ids, self._frees = self._frees, []
            self.ch.send(Free(ids))

    def prefill(self, seqs) -> None:
        """Tell the worker about new (or resumed) sequences: all tokens the target holds K/V for."""
        self._flush_frees()
        msg = Prefill.of(seqs, self.spec.k)
        self.ch.send(msg)
        for s, t in zip(seqs, msg.tokens):
            s.draft_cached = len(t)
            self.known.add(s.seq_id)
            self.fresh.add(s.seq_id)

    def propose(self, seqs, ks: list[int], sampling: SamplingRows) -> Proposal:
        self._flush_frees()
        lazy = [s for s in seqs if s.seq_id not in self.known]
        if lazy:                                  # attached mid-stream: catch the worker up first
            self.prefill(lazy)
        ps = [s.params for s in seqs]
        t_send = time.perf_counter()
        window = 0.0 if self._last_reply is None else t_send - self._last_reply
        msg = Speculate([s.seq_id for s in seqs], [-2 if s.seq_id in self.fresh else s.last_accepted for s in seqs],
                        [s.last_token for s in seqs], [len(s) for s in seqs], list(ks),
                        [s.tokens_from(s.draft_cached) for s in seqs], [p.temperature for p in ps],
                        [p.top_k for p in ps], [p.top_p for p in ps], int(window * 1e6))
        self.ch.send(msg)
        reply = self.ch.recv()
        t_recv = time.perf_counter()
        if not isinstance(reply, SpeculateReply) or reply.tokens.shape[0] != len(seqs):
            raise ChannelError(f"bad reply to SPECULATE: {type(reply).__name__}")
        for s in seqs:
            s.draft_cached = len(s)
            self.fresh.discard(s.seq_id)
        build = reply.build_us * 1e-6
        self._warn_if_exposed(window, build)
        self._last_reply = t_recv
        status = [RowStatus(int(x)) for x in reply.status]
        tokens = torch.from_numpy(reply.tokens).to(self.device)                      # [B, K]
        return Proposal(tokens, self._q(reply, status, tokens, seqs, sampling), list(ks),
                        status=status if self.async_mode else None, wait_s=t_recv - t_send, build_s=build)

    def _q(self, reply: SpeculateReply, status, tokens: torch.Tensor, seqs, sampling: SamplingRows):
        return proposal_q(reply, status, tokens, seqs, sampling, self.vocab_size, self.device)

    def _warn_if_exposed(self, window: float, build: float) -> None:
        """Warn (every WARN_EVERY_S) when the worker's cache build outlasts the target's round."""
        if not self.async_mode or build <= 0 or window <= 0:
            return
        a = 0.1
        self._window = window if self._window is None else (1 - a) * self._window + a * window
        self._build = build if self._build is None else (1 - a) * self._build + a * build
        now = time.monotonic()
        if self._build > self._window and now - self._warned > WARN_EVERY_S:
            self._warned = now
            log.warning("SSD draft step %.2f ms > target round %.2f ms: the draft is not hidden behind "
                        "verification and the target waits on it", 1e3 * self._build, 1e3 * self._window)

    def free(self, seq) -> None:
        if seq.seq_id in self.known:
            self._frees.append(seq.seq_id)
        self.known.discard(seq.seq_id)
        self.fresh.discard(seq.seq_id)
        seq.draft_cached = 0

    def close(self, send_exit: bool = True) -> None:
        if send_exit and not self.ch.closed:
            try:
                self.ch.send(Exit())
            except ChannelError as e:
                log.info("draft worker gone before EXIT: %s", e)
        self.ch.close(finish=send_exit)



def proposal_q(reply: SpeculateReply, status, tokens: torch.Tensor, seqs, sampling: SamplingRows, vocab_size: int,
               device: torch.device) -> torch.Tensor | None:
    """[B, K, V] q for verify() from a speculation reply, or None when every row is greedy (verify is
    then not used): the draft's q for sampled HIT/JIT rows, uniform for FAST rows, one-hot otherwise."""
    if sampling.all_greedy:
        return None
    B, K = tokens.shape
    V = vocab_size
    q = torch.zeros((B, K, V), dtype=torch.float32, device=device)
    q.scatter_(2, tokens[..., None], 1.0)                                       # greedy rows: one-hot
    sent = None if reply.probs is None else reply.probs.to(device).view(-1, K, V)
    i = 0
    for b, (s, st) in enumerate(zip(seqs, status)):
        if s.params.temperature <= 0:
            continue
        if st is RowStatus.FAST:
            q[b] = 1.0 / V
        elif st in (RowStatus.HIT, RowStatus.JIT):
            if sent is None or i >= len(sent):
                raise ChannelError("the reply lacks q for a sampled row")
            q[b] = sent[i]
            i += 1
    return q
