"""The engine: requests in, committed tokens out, one ``step()`` at a time.

Data flow of one step (see sequence.py for the commit convention):

* CPU scheduling state: :class:`Sequence` objects (token ids, params, stats) owned by the
  :class:`Scheduler`; block tables owned by each runner's block manager.
* ``step()`` either prefills newly admitted sequences (target samples their first token) or
  runs one decode round for every running sequence: the drafter proposes up to K tokens per
  row, the target scores [last, d1..dK] for all rows in ONE forward (a row with K = 0 is plain
  AR), verification picks (k, t*), and the host commits 1 + k tokens per row.
* Device inputs are built per forward from the feeds (runner.py); the only host syncs are
  the ones that bring sampled tokens back, each marked where it happens.
* SSD (mode "async") and ``draft="remote:..."``: the drafter is a RemoteDrafter talking to a
  draft worker process (spec/remote.py, spec/link.py); it is attached once the worker has
  joined and detached on a channel failure (AR from then on, committed tokens kept).
* ``tensor_parallel_size`` N > 1: this process is rank 0 of the target (tp.py). Everything above
  stays here; the target runner broadcasts each forward's arrays to ranks 1..N-1, which hold
  the other weight and KV shards, and only rank 0 receives logits.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..config import EngineConfig, SamplingParams
from ..layers.sampling import sample_from_probs
from ..models.loader import eos_token_ids, load_model, load_tokenizer
from ..spec.drafters import SamplingRows
from ..spec.transport import ChannelError
from ..spec.verify import greedy_accept_length, verify
from .build import EngineBuild
from .commit import commit_tokens
from .detokenizer import IncrementalDetokenizer
from .draft_attach import DraftAttachment
from .metrics import EngineMetrics, Timer
from .runner import Feed
from .scheduler import Scheduler
from .sequence import Sequence

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StepOutput:
    seq: Sequence
    new_token_ids: list[int]
    text_delta: str
    finished: bool


class LLMEngine(EngineBuild, DraftAttachment):
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.tp = None                    # rank 0's handle on the target's other ranks (tp.py)
        self.drafter, self.link = None, None
        try:
            self._setup(cfg)
        except BaseException:
            self.close()                  # no worker process outlives a failed start
            raise

    def _setup(self, cfg: EngineConfig) -> None:
        self.device = torch.device(cfg.device)
        if cfg.tensor_parallel_size > 1:
            self.tp = self._start_tp()
            self.device = self.tp.device              # devices[0], with its index
        self.draft_device = torch.device(cfg.draft_device) if cfg.draft_device else self.device
        target = load_model(cfg.target, self.device, cfg.dtype, cfg.impl, cfg.max_model_len,
                            tp=None if self.tp is None else self.tp.group)
        self.target = target
        self.tokenizer = load_tokenizer(target.folder)
        self.eos_ids = eos_token_ids(target.folder, target.hf_config, self.tokenizer)
        limit = getattr(target.hf_config, "max_position_embeddings", None) or getattr(target.hf_config, "n_positions", 2048)
        self.max_model_len = min(cfg.max_model_len or limit, limit)
        self.runner = self._make_runner(target, self.device, "target", share=0.5 if self._draft_shares_device() else 1.0,
                                        tp=self.tp)
        self.drafter, draft_runner = self._make_drafter()
        runners = [self.runner] + ([draft_runner] if draft_runner is not None else [])
        self.scheduler = Scheduler(cfg.max_batch_size, cfg.max_prefill_tokens, runners, self.drafter)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.metrics = EngineMetrics()
        self.timer = Timer(self.device)
        self.k = cfg.spec.k if self.drafter is not None else 0
        self.link = None
        if self._uses_worker():
            self._start_link()
        self.select_attention(cfg.attention)
        if self.device.type == "cuda" and not cfg.eager:
            self.enable_graphs(capture=True)

    # --- requests ---------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        if not prompt_ids:
            raise ValueError("prompt is empty: at least 1 token is required")
        vocab = self.runner.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is out of range: allowed [0, {vocab - 1}]")
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens: allowed [1, {self.max_model_len - 1}] "
                             f"(max_model_len={self.max_model_len})")
        seq = Sequence(list(prompt_ids), params, arrival=time.perf_counter())
        seq.detok = IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens)
        self.scheduler.add(seq)
        return seq

    def abort(self, seq: Sequence, reason: str = "abort") -> None:
        if seq.finished:
            return
        seq.finish_reason = reason
        self.scheduler.finish(seq)
        self.metrics.requests_aborted += 1

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # --- the step ---------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        if self.link is not None and self.drafter is None:
            channel = self.link.take()
            if channel is not None:
                self._attach(channel)
        admitted = self.scheduler.admit(lookahead=1 + self.k)
        if admitted:
            return self._prefill(admitted)
        if not self.scheduler.running:
            return []
        try:
            return self._decode()
        except ChannelError as e:          # nothing was committed yet: redo the round in AR mode
            self._draft_failed(e)
            return self._decode()

    def _k_for(self, s: Sequence) -> int:
        if self.drafter is None:
            return 0
        k = self.k if s.params.num_draft_tokens is None else min(s.params.num_draft_tokens, self.k)
        return max(0, min(k, s.remaining - 1, self.max_model_len - len(s) - 1))

    def _prefill(self, seqs: list[Sequence]) -> list[StepOutput]:
        t0 = self.timer.now()
        feeds, fresh = [], []
        for s in seqs:
            if s.output_ids:   # resumed after preemption: rebuild the cache of committed tokens
                feeds.append(Feed(s.seq_id, s.token_ids[:-1], 0, num_logits=0))
            else:
                feeds.append(Feed(s.seq_id, s.prompt_ids, 0, num_logits=1))
                fresh.append(s)
            s.draft_cached = 0
        if self.drafter is not None and hasattr(self.drafter, "prefill"):
            try:                           # sent first: the draft's prefill overlaps the target's
                self.drafter.prefill(seqs)
            except ChannelError as e:
                self._draft_failed(e)
        logits = self.runner.forward(feeds)
        outs = []
        if fresh:
            rows = SamplingRows(fresh, self.device, self.generator)
            tokens = self._sample(rows, logits).tolist()      # host sync: first tokens go to the host
            now = time.perf_counter()
            for s, t in zip(fresh, tokens):
                s.first_token_time = now
                outs.append(self._commit(s, [t]))
        m = self.metrics
        m.prefill_steps += 1
        m.prefill_tokens += sum(len(f.tokens) for f in feeds)
        m.prefill_time += self.timer.now() - t0
        return outs

    def _sample(self, rows: SamplingRows, logits: torch.Tensor) -> torch.Tensor:
        if rows.all_greedy:
            return logits.argmax(-1)
        return sample_from_probs(rows.probs(logits), rows.uniforms(1)[:, 0])

    def _decode(self) -> list[StepOutput]:
        sched, m = self.scheduler, self.metrics
        ks = {s.seq_id: self._k_for(s) for s in sched.running}
        for s in sched.make_room(ks):
            log.info("preempted sequence %d (KV cache full); it will be recomputed", s.seq_id)
            m.preemptions += 1
        seqs = list(sched.running)
        kl = [ks[s.seq_id] for s in seqs]
        B, K = len(seqs), max(kl)
        rows = SamplingRows(seqs, self.device, self.generator)
        timer = self.timer
        t0, w0 = timer.mark(), timer.now()
        if K > 0:
            prop = self.drafter.propose(seqs, kl, rows)
            num = prop.num
            draft_tokens = prop.tokens.to(self.device)
        else:
            num = [0] * B
            draft_tokens = torch.zeros((B, 0), dtype=torch.long, device=self.device)
        t1 = timer.mark()
        Kv = max(num)
        # verify feed [last, d1..dk]: the drafts stay on the device (host lists hold placeholders)
        feeds = [Feed(s.seq_id, [s.last_token] + [0] * num[b], len(s) - 1, num_logits=num[b] + 1)
                 for b, s in enumerate(seqs)]
        draft_tokens = draft_tokens[:, :Kv]
        logits = self.runner.forward(feeds, (draft_tokens, 1) if Kv else None)   # [sum(num + 1), V]
        if Kv == 0:         # plain AR round: sample straight from p_0 (same uniform as verify would use)
            if rows.all_greedy:
                tok = logits.argmax(-1)
            else:
                tok = sample_from_probs(rows.probs(logits), rows.uniforms(self.k + 1)[:, self.k])
            t2 = timer.mark()
            rec = tok.tolist()                                    # host sync: the step's tokens
            return self._finish_round(seqs, num, [[]] * B, [0] * B, rec, (t0, t1, t2, w0))
        padded = self._pad_rows(logits, num, Kv)                  # [B, Kv + 1, V]
        num_t = torch.tensor(num, device=self.device)
        if rows.all_greedy:
            argmax = padded.argmax(-1)                            # [B, Kv + 1]
            accepted = greedy_accept_length(draft_tokens, argmax, num_t)
            recovery = argmax.gather(1, accepted[:, None]).squeeze(1)
        else:
            q = None if prop.probs is None else prop.probs[:, :Kv].to(self.device)
            u = rows.uniforms(self.k + 1)        # a fixed count per row: seeded streams ignore batch make-up
            accepted, recovery = verify(rows.probs(padded), draft_tokens, q, num_t, u[:, :Kv], u[:, self.k])
        t2 = timer.mark()
        flat = torch.cat([accepted, recovery, draft_tokens.reshape(-1)]).tolist()   # host sync: the round's one
        acc, rec = flat[:B], flat[B:2 * B]
        drafts = [flat[2 * B + b * Kv: 2 * B + b * Kv + num[b]] for b in range(B)]
        return self._finish_round(seqs, num, drafts, acc, rec, (t0, t1, t2, w0))

    def _finish_round(self, seqs, num, drafts, acc, rec, marks) -> list[StepOutput]:
        """Commit each row's outcome (k accepted drafts + recovery token), roll back, record stats."""
        m, timer = self.metrics, self.timer
        t0, t1, t2, w0 = marks
        if any(num):
            m.draft_time += timer.seconds(t0, t1)
            m.draft_steps += 1
        m.verify_time += timer.seconds(t1, t2)
        m.verify_steps += 1
        outs = []
        for b, s in enumerate(seqs):
            old_len = len(s)
            new = drafts[b][: acc[b]] + [rec[b]]
            self.runner.truncate(s.seq_id, old_len + acc[b])      # rollback by length: rejected K/V is dropped
            if num[b]:
                self.drafter.commit(s, old_len, acc[b], num[b])
                s.stats.rounds += 1
                s.stats.drafted += num[b]
                s.stats.accepted += acc[b]
                s.stats.spec_tokens += 1 + acc[b]
                m.rounds += 1
                m.drafted += num[b]
                m.accepted += acc[b]
                m.spec_tokens += 1 + acc[b]
                m.tokens_per_round_hist[1 + acc[b]] += 1
            else:
                s.stats.ar_steps += 1
            s.last_accepted = acc[b]
            out = self._commit(s, new)
            m.decode_tokens += len(out.new_token_ids)
            outs.append(out)
        m.decode_steps += 1
        m.decode_time += timer.now() - w0
        return outs

    def _pad_rows(self, logits: torch.Tensor, num: list[int], Kv: int) -> torch.Tensor:
        B = len(num)
        if all(n == Kv for n in num):
            return logits.view(B, Kv + 1, -1)
        padded = logits.new_zeros((B, Kv + 1, logits.shape[-1]))
        idx = []
        for b, n in enumerate(num):
            idx.extend(b * (Kv + 1) + i for i in range(n + 1))
        padded.view(B * (Kv + 1), -1)[torch.tensor(idx, device=logits.device)] = logits
        return padded

    def _commit(self, s: Sequence, new: list[int]) -> StepOutput:
        """Append a round's tokens (stop conditions inside the block) and emit the text delta."""
        emitted, delta, reason = commit_tokens(s, new, self.eos_ids, self.max_model_len)
        if reason is not None:
            s.finish_reason = reason
            self.scheduler.finish(s)
            self.metrics.requests_finished += 1
        return StepOutput(s, emitted, delta, reason is not None)
