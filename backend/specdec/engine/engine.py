"""The engine: requests in, committed tokens out, one ``step()`` at a time.

Data flow of one step (see sequence.py for the commit convention):

* CPU scheduling state: :class:`Sequence` objects (token ids, params, stats) owned by the
  :class:`Scheduler`; block tables owned by each runner's block manager.
* ``step()`` either prefills newly admitted sequences (target samples their first token) or
  runs one decode round for every running sequence: the drafter proposes up to K tokens per
  row, the target scores [last, d1..dK] for all rows in ONE forward (a row with K = 0 is plain
  AR), verification picks (k, t*), and the host commits 1 + k tokens per row.
* Device inputs are built per forward from the feeds (runner/); the host syncs are the ones that
  bring sampled tokens back (one per round), each marked where it happens.
* The drafter lives in the engine's :class:`~specdec.draft.slot.DraftSlot` (draft/slot.py): none,
  ngram, a local draft model, or a draft worker process (SSD, ``remote:...``) that attaches once
  connected and detaches on a channel failure (AR from then on, committed tokens kept).
* ``tensor_parallel_size`` N > 1: this process is rank 0 of the target (parallel/tp.py). Everything
  above stays here; the target runner broadcasts each forward's arrays to ranks 1..N-1, which hold
  the other weight and KV shards, and only rank 0 receives logits.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from ..config import EngineConfig, SamplingParams
from ..draft.channel import ChannelError
from ..draft.loop import catch_up_forwards
from ..draft.slot import DraftContext, DraftSlot
from ..layers.sampling import SamplingRows, sample_from_probs
from ..runner.feed import Feed
from ..runner.graph_tools import captures
from ..spec.auto_k import AutoK
from ..spec.round_k import round_k
from ..spec.simulate import make_simulator
from ..spec.status import RowStatus
from ..spec.verify import GreedyRound, greedy_accept_length, verify
from ..transfer import upload
from .build import build_target, start_tensor_parallel
from .commit import commit_tokens
from .detokenizer import IncrementalDetokenizer
from .metrics import EngineMetrics, Timer
from .overlap import ARPipeline
from .scheduler import Scheduler
from .sequence import Sequence
from .spec_overlap import SpecPipeline

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StepOutput:
    seq: Sequence
    new_token_ids: list[int]
    text_delta: str
    finished: bool


class LLMEngine:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.tp = None                    # rank 0's handle on the target's other ranks (parallel/tp.py)
        self.draft: DraftSlot | None = None
        try:
            self._setup(cfg)
        except BaseException:
            self.close()                  # no worker process outlives a failed start
            raise

    def _setup(self, cfg: EngineConfig) -> None:
        if cfg.tensor_parallel_size > 1:
            self.tp = start_tensor_parallel(cfg)
        t = build_target(cfg, self.tp)
        self.target, self.runner, self.tokenizer = t.model, t.runner, t.tokenizer
        self.eos_ids, self.max_model_len, self.device = t.eos_ids, t.max_model_len, t.device
        self.draft_device = torch.device(cfg.draft_device) if cfg.draft_device else self.device
        self.metrics = EngineMetrics()
        self.timer = Timer(self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        ctx = DraftContext(dataclasses.replace(cfg, max_model_len=self.max_model_len), self.device, self.draft_device,
                           self.runner.vocab_size, self.tokenizer, self.target)
        self.draft = DraftSlot(ctx)
        # SIMULATED verification (bench --simulate-acceptance only): None in every real run
        self.simulator = make_simulator(cfg.spec, self.runner.vocab_size, cfg.seed)
        self.scheduler = Scheduler(cfg.max_batch_size, cfg.max_prefill_tokens, self.runner, self.draft)
        self.pipeline = ARPipeline(self.runner, self.max_model_len, self.generator)
        self.spec_pipeline = SpecPipeline(self.runner, self.max_model_len, cfg.spec.k, self.timer, self.generator)
        self.auto_k = self._auto_k(cfg.spec)
        self._captures = 0                  # graphs captured before this round (its times are steady-state if unchanged)
        self._catch_ups = 0                 # the same for the draft's long catch-ups (draft/loop.py)

    @property
    def drafter(self):
        """The drafter speculating now (None: plain decoding, e.g. while a draft worker is away)."""
        return self.draft.drafter if self.draft is not None else None

    @property
    def k(self) -> int:
        """Draft tokens per round now: the configured K while a drafter is attached, else 0."""
        return self.cfg.spec.k if self.drafter is not None else 0

    @property
    def runners(self) -> list:
        """The target's runner and, for a local draft model, the draft's."""
        return [self.runner] + ([self.draft.runner] if self.draft is not None and self.draft.runner is not None else [])

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
        self.draft.poll()                  # a draft worker that connected since the last step attaches now
        admitted = self.scheduler.admit(lookahead=2 + self.k)
        if admitted:
            return self._drain() + self._prefill(admitted)
        running = self.scheduler.running
        k_now = self._next_k(running) if running else 0
        if running and k_now == 0 and self.cfg.overlap and ARPipeline.usable(self.runner, running) \
                and not self._wants_hidden():
            return self._decode_overlapped()
        k_over = self._overlapped_k(running, k_now) if running and k_now > 0 else 0
        if k_over:
            return self._decode_spec_overlapped(k_over)
        outs = self._drain()
        if not self.scheduler.running:
            return outs
        try:
            return outs + self._decode(k_now)
        except ChannelError as e:          # nothing was committed yet: redo the round in AR mode
            self._draft_failed(e)
            return outs + self._decode(0)

    def _next_k(self, running) -> int:
        """K for the next round: 0 without a drafter, the configured K, or (k_policy auto) the one the measured
        costs favour, 0 = plain steps. Plain steps of a speculative engine run overlapped like AR's
        (engine/overlap.py): auto K's fallback is AR's own speed, and its plain-step times are AR's."""
        if self.drafter is None:
            return 0
        if self.auto_k is None:
            return self.cfg.spec.k
        return self.auto_k.next_k(len(running), self.metrics)

    # --- overlapped AR steps (engine/overlap.py) -------------------------------------------------
    def _decode_overlapped(self) -> list[StepOutput]:
        """Launch the next AR step from the device's tokens, then commit the one before it."""
        outs = self._drain_spec()
        if not self.scheduler.running:
            return outs
        m, w0 = self.metrics, self.timer.now()
        for s in self.scheduler.make_room({s.seq_id: 1 for s in self.scheduler.running}):   # room for 2 steps
            log.info("preempted sequence %d (KV cache full); it will be recomputed", s.seq_id)
            m.preemptions += 1
        steady, captured = self.pipeline.inflight is not None, captures()
        step, tokens = self.pipeline.advance(list(self.scheduler.running))
        outs += self._commit_ar(step.seqs, tokens)
        m.decode_steps += 1
        m.verify_steps += 1
        dt = self.timer.now() - w0
        m.decode_time += dt
        if self.auto_k is not None and self.drafter is not None:
            # a plain step of auto K: one step's time once the pipeline is full (the first launches two)
            self.auto_k.plain_step(len(step.seqs), dt, timed=steady and captures() == captured)
        return outs

    def _drain(self) -> list[StepOutput]:
        """Commit the overlapped step or round in flight, if any."""
        return self._drain_ar() + self._drain_spec()

    def _drain_ar(self) -> list[StepOutput]:
        done = self.pipeline.drain()
        return [] if done is None else self._commit_ar(done[0].seqs, done[1])

    # --- overlapped speculative rounds (engine/spec_overlap.py) -----------------------------------
    def _overlapped_k(self, running, k_now: int) -> int:
        """K of an overlapped round, or 0: greedy sync rounds overlap (SIMULATED outcomes and drafters that read
        hidden states take the plain round)."""
        if not self.cfg.overlap or self.simulator is not None or self._wants_hidden():
            return 0
        return self.spec_pipeline.round_k(self.drafter, running, k_now)

    def _decode_spec_overlapped(self, k: int) -> list[StepOutput]:
        """Launch the next round from the device's outcome of the round in flight, then commit that one."""
        outs = self._drain_ar()
        sched, m, w0 = self.scheduler, self.metrics, self.timer.now()
        for s in sched.make_room({s.seq_id: self.spec_pipeline.k_max + 2 + k for s in sched.running}):   # 2 rounds
            log.info("preempted sequence %d (KV cache full); it will be recomputed", s.seq_id)
            m.preemptions += 1
        if not sched.running:
            return outs
        steady, marks = self.spec_pipeline.inflight is not None, (captures(), catch_up_forwards())
        rnd, rows = self.spec_pipeline.advance(self.drafter, list(sched.running), k)
        # the round committed now ran beside the one just launched: its cost is this step's wall time once one
        # round is launched per step (the first launches two) and nothing was captured meanwhile
        return outs + self._commit_round(rnd, rows, w0, in_flight=True,
                                         timed=steady and marks == (captures(), catch_up_forwards()))

    def _drain_spec(self) -> list[StepOutput]:
        """Commit the overlapped round in flight, if any (its acceptance counts for auto K; its time, with no step
        of its own, does not)."""
        done = self.spec_pipeline.drain()
        return [] if done is None else self._commit_round(*done, self.timer.now(), in_flight=False, timed=False)

    def _commit_round(self, rnd, rows: list[list[int]], w0: float, in_flight: bool, timed: bool) -> list[StepOutput]:
        """Commit an overlapped round's outcome rows [accepted, recovery, d_1..d_K] (rows that stopped, were
        preempted or aborted since it was launched are dropped: wasted work) and let auto K observe it."""
        keep = [b for b, s in enumerate(rnd.seqs) if s.running]
        if not keep:
            return []
        seqs, k, acc = [rnd.seqs[b] for b in keep], rnd.k, [rows[b][0] for b in keep]
        status = None if rnd.status is None else [rnd.status[b] for b in keep]
        outs = self._finish_round(seqs, None, [k] * len(seqs), [rows[b][2: 2 + k] for b in keep], acc,
                                  [rows[b][1] for b in keep], (*rnd.marks, w0), in_flight=in_flight, observe=False,
                                  status=status)
        if self.auto_k is not None:
            self.auto_k.spec_round(len(seqs), k, self.timer.seconds(rnd.marks[0], rnd.marks[1]) if timed else 0.0,
                                   self.timer.now() - w0 if timed else 0.0, sum(acc), sum(a < k for a in acc),
                                   timed=timed)
        return outs

    def _commit_ar(self, seqs, tokens: list[int]) -> list[StepOutput]:
        outs = []
        for s, t in zip(seqs, tokens):
            if not s.running:                    # stopped (or preempted, or aborted) while this step ran
                continue
            s.stats.ar_steps += 1
            s.last_accepted = 0
            out = self._commit(s, [t])
            self.metrics.decode_tokens += len(out.new_token_ids)
            outs.append(out)
        return outs

    def _draft_failed(self, err: Exception) -> None:
        self.metrics.ar_fallbacks += 1
        self.draft.failed(err)

    @staticmethod
    def _auto_k(spec) -> AutoK | None:
        return AutoK(k_max=spec.k) if spec.k_policy == "auto" else None

    def reset_auto_k(self) -> None:
        """Forget k_policy="auto"'s estimates (after warm-up requests whose acceptance means nothing)."""
        self.auto_k = self._auto_k(self.cfg.spec)

    def _k_for(self, s: Sequence, k_now: int) -> int:
        if self.drafter is None:
            return 0
        return round_k(k_now, s.params.num_draft_tokens, s.remaining, self.max_model_len - len(s) - 1)

    def _prefill(self, seqs: list[Sequence]) -> list[StepOutput]:
        t0 = self.timer.now()
        feeds, fresh = [], []
        for s in seqs:
            if s.output_ids:   # resumed after preemption: rebuild the cache of committed tokens
                feeds.append(Feed(s.seq_id, s.prefill_ids, 0, num_logits=0))
            else:
                feeds.append(Feed(s.seq_id, s.prompt_ids, 0, num_logits=1))
                fresh.append(s)
            s.draft_cached = 0
        if self.drafter is not None:
            try:                           # sent first: a draft worker's prefill overlaps the target's
                self.drafter.prefill(seqs)
            except ChannelError as e:
                self._draft_failed(e)
        if self._wants_hidden():      # EAGLE hook: the drafter sees every committed position's features
            logits, hidden = self.runner.forward(feeds, hidden=True)
            for s, f, h in zip(seqs, feeds, hidden):
                self.drafter.observe(s, f.start, h)
        else:
            logits = self.runner.forward(feeds)
        outs = []
        if fresh:
            rows = SamplingRows(fresh, self.device, self.generator)
            tokens = rows.sample(logits).tolist()             # host sync: first tokens go to the host
            now = time.perf_counter()
            for s, t in zip(fresh, tokens):
                s.first_token_time = now
                outs.append(self._commit(s, [t]))
        m = self.metrics
        m.prefill_steps += 1
        m.prefill_tokens += sum(len(f.tokens) for f in feeds)
        m.prefill_time += self.timer.now() - t0
        return outs

    def _wants_hidden(self) -> bool:
        """The drafter reads the target's hidden states (EAGLE, draft/eagle.py)."""
        return self.drafter is not None and getattr(self.drafter, "wants_hidden", False)

    def _decode(self, k_now: int) -> list[StepOutput]:
        """One round of K = ``k_now`` drafts per row (0: a plain step that is not overlapped)."""
        sched, m = self.scheduler, self.metrics
        self._captures = captures()
        self._catch_ups = catch_up_forwards()
        ks = {s.seq_id: self._k_for(s, k_now) for s in sched.running}
        for s in sched.make_room(ks):
            log.info("preempted sequence %d (KV cache full); it will be recomputed", s.seq_id)
            m.preemptions += 1
        seqs = list(sched.running)
        kl = [ks[s.seq_id] for s in seqs]
        B, K = len(seqs), max(kl)
        rows = SamplingRows(seqs, self.device, self.generator)
        timer = self.timer
        t0, w0 = timer.mark(), timer.now()
        prop = None
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
        dev_tokens = (draft_tokens, 1) if Kv else None
        want_h = self._wants_hidden()
        hkw = {"hidden": True} if want_h else {}
        hidden = None            # EAGLE hook: per-row features of the fed positions
        if rows.all_greedy and self.simulator is None:   # the outcome comes with the forward (one graph on CUDA)
            packed = self.runner.forward(feeds, dev_tokens, epilogue=GreedyRound(num), **hkw)   # [B, 2 + Kv]
            if want_h:
                packed, hidden = packed
            if prop is not None:
                self.drafter.overlap()    # SSD in this process: the next tree is launched beside the verify
            t2 = timer.mark()
            out = packed.tolist()                                 # host sync: the round's one
            return self._finish_round(seqs, prop, num, [r[2: 2 + num[b]] for b, r in enumerate(out)],
                                      [r[0] for r in out], [r[1] for r in out], (t0, t1, t2, w0), hidden)
        logits = self.runner.forward(feeds, dev_tokens, **hkw)           # [sum(num + 1), V]
        if want_h:
            logits, hidden = logits
        if prop is not None:
            self.drafter.overlap()        # SSD in this process: the next tree is launched beside the verify
        u = rows.uniforms(self.k + 1)        # a fixed count per row: seeded streams ignore batch make-up
        if Kv == 0:         # plain AR round: sample straight from p_0 (the uniform verify would use)
            tok = logits.argmax(-1) if rows.all_greedy else sample_from_probs(rows.probs(logits), u[:, self.k])
            t2 = timer.mark()
            rec = tok.tolist()                                    # host sync: the step's tokens
            return self._finish_round(seqs, prop, num, [[]] * B, [0] * B, rec, (t0, t1, t2, w0), hidden)
        padded = self._pad_rows(logits, num, Kv)                  # [B, Kv + 1, V]
        num_t = upload(num, self.device, torch.long)
        if rows.all_greedy:
            argmax = padded.argmax(-1)                            # [B, Kv + 1]
            accepted = greedy_accept_length(draft_tokens, argmax, num_t)
            recovery = argmax.gather(1, accepted[:, None]).squeeze(1)
        else:
            q = None if prop.probs is None else prop.probs[:, :Kv].to(self.device)
            accepted, recovery = verify(rows.probs(padded), draft_tokens, q, num_t, u[:, :Kv], u[:, self.k])
        if self.simulator is not None:    # SIMULATED: the outcome is drawn (spec/simulate.py), not verified
            accepted, recovery = self.simulator.outcome(num, seqs, self.drafter, self.device)
        t2 = timer.mark()
        flat = torch.cat([accepted, recovery, draft_tokens.reshape(-1)]).tolist()   # host sync: the round's one
        acc, rec = flat[:B], flat[B:2 * B]
        drafts = [flat[2 * B + b * Kv: 2 * B + b * Kv + num[b]] for b in range(B)]
        return self._finish_round(seqs, prop, num, drafts, acc, rec, (t0, t1, t2, w0), hidden)

    def _finish_round(self, seqs, prop, num, drafts, acc, rec, marks, hidden=None, in_flight=False,
                      observe=True, status=None) -> list[StepOutput]:
        """Commit each row's outcome (k accepted drafts + recovery token), roll back, record stats.
        hidden: per-row features of the verify feed (EAGLE): the committed ones go to the drafter.
        in_flight: the next round is already running (engine/spec_overlap.py): its K/V lies past this
        round's, so no row is rolled back. status: SSD's RowStatus per row, where ``prop`` does not carry it
        (an overlapped round)."""
        m, timer = self.metrics, self.timer
        t0, t1, t2, w0 = marks
        if any(num):
            m.draft_time += timer.seconds(t0, t1)
            m.draft_steps += 1
        if prop is not None:
            status = prop.status
            m.channel_wait_time += prop.wait_s
            if prop.build_s > 0:
                m.draft_build_time += prop.build_s
                m.draft_builds += 1
        m.verify_time += timer.seconds(t1, t2)
        m.verify_steps += 1
        outs = []
        for b, s in enumerate(seqs):
            old_len = len(s)
            new = drafts[b][: acc[b]] + [rec[b]]
            if hidden is not None:            # features of positions old_len - 1 .. old_len - 1 + acc
                self.drafter.observe(s, old_len - 1, hidden[b][: acc[b] + 1])
            if num[b]:
                if not in_flight:
                    self.runner.truncate(s.seq_id, old_len + acc[b])  # rollback by length: rejected K/V is dropped
                self.drafter.commit(s, old_len, acc[b], num[b], in_flight)
                if status is not None and status[b] is not RowStatus.NONE:
                    self._count_lookup(s, status[b] is RowStatus.HIT, 1 + acc[b])
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
        if self.auto_k is not None and observe:
            # this round's draft/verify times and acceptance (host numbers); a round that captured a graph or
            # caught the draft up on plain steps (draft/loop.py) paid a one-off cost: its acceptance counts, its
            # times do not
            self.auto_k.after_step(m, timed=captures() == self._captures and catch_up_forwards() == self._catch_ups)
        return outs

    def _count_lookup(self, s: Sequence, hit: bool, tokens: int) -> None:
        """SSD: one speculation-cache lookup (a hit or a miss) and the tokens its round committed."""
        for stats in (s.stats, self.metrics):
            stats.cache_lookups += 1
            stats.cache_hits += int(hit)
            if hit:
                stats.hit_tokens += tokens
            else:
                stats.miss_tokens += tokens

    def _pad_rows(self, logits: torch.Tensor, num: list[int], Kv: int) -> torch.Tensor:
        B = len(num)
        if all(n == Kv for n in num):
            return logits.view(B, Kv + 1, -1)
        padded = logits.new_zeros((B, Kv + 1, logits.shape[-1]))
        idx = []
        for b, n in enumerate(num):
            idx.extend(b * (Kv + 1) + i for i in range(n + 1))
        padded.view(B * (Kv + 1), -1)[upload(idx, logits.device, torch.long)] = logits
        return padded

    def _commit(self, s: Sequence, new: list[int]) -> StepOutput:
        """Append a round's tokens (stop conditions inside the block) and emit the text delta."""
        emitted, delta, reason = commit_tokens(s, new, self.eos_ids, self.max_model_len)
        if reason is not None:
            s.finish_reason = reason
            self.scheduler.finish(s)
            self.metrics.requests_finished += 1
        return StepOutput(s, emitted, delta, reason is not None)

    # --- settings and lifetime ------------------------------------------------------------------
    def update_spec(self, **changes) -> None:
        """Change speculation settings (K, fan-out, Saguaro C, backup) between requests; a draft
        worker is reconfigured in place (no reload)."""
        if self.scheduler.has_work():
            raise RuntimeError("update_spec needs an idle engine (no running or waiting requests)")
        if "draft" in changes and changes["draft"] != self.cfg.spec.draft:
            raise ValueError("the draft itself cannot change; build a new LLM")
        spec = dataclasses.replace(self.cfg.spec, **changes)
        dataclasses.replace(self.cfg, spec=spec)           # validates the combination (e.g. sampler_x needs async)
        self.cfg.spec = self.draft.ctx.config.spec = spec
        self._drain()                                      # what is still in flight holds finished rows only
        self.spec_pipeline.k_max = spec.k
        self.reset_auto_k()
        self.draft.configure(spec)
        self.simulator = make_simulator(spec, self.runner.vocab_size, self.cfg.seed)

    def close(self) -> None:
        """Send EXIT to a draft worker and to the target's other ranks, and wait for them to end (idempotent)."""
        if self.draft is not None:
            self.draft.close()
        if self.tp is not None:
            self.tp.close()
            self.tp = None
