"""The draft side of speculation: the draft model's KV, the speculation cache and each round's work.

Everything here runs on the draft device, driven by one caller at a time: the draft worker process
(worker.py, over a channel) or the target's own process (inprocess.py, no channel). The transport is
elsewhere, so this class can be driven directly in tests.

* :class:`DraftSeq`: every committed token the target told us about (host list), how many of
  them have correct K/V in the runner (``kv_valid``), and the tokens right after those whose
  K/V was written speculatively (the last glue or JIT: ``spec``); they become valid once committed.
* :meth:`DraftCore.speculate` is the critical path: wait for the last build (its one host sync),
  apply the new tokens, look each row's outcome key up in the speculation cache, answer hits from
  it and misses with the backup (JIT: K decode steps for the missed rows only; fast: uniform random
  tokens, q uniform).
* :meth:`DraftCore.build` runs after the reply, while the target verifies: the glue forward over
  [t*, d1..dK], then the tree (tree_build.py). It only *launches* device work; the next
  :meth:`speculate` (or :meth:`finish`) waits for it. Sync mode never builds.
* The build rule (spec/adaptive.py ``BuildRule``): when the measured hit rate makes trees not worth
  their round time, the core drafts like sync (no tree; every row drafted on the critical path by
  the JIT), and keeps measuring the hit rate the tree would have had from the JIT's own logits
  (the top candidates at each depth: the *shadow fork*).
* Rounds drafted like sync, in the target's process (:meth:`DraftCore.speculate` with ``on_device``): when no
  row can hit (no tree was built for any) the JIT's loop graph drafts every row and its tokens stay on the
  device, as in sync mode: the verify is launched from them with no host round trip. The host copy the
  core keeps (for the next round's K/V bookkeeping, a build, the shadow fork) is read later
  (:meth:`DraftCore._settle`). Only every ``SHADOW_EVERY``-th such round takes the shadow fork (a
  vocabulary-wide top-k per step): the hit-rate estimate needs a sample, not every round.
* Rounds drafted like sync *by the engine's overlapped pipeline* (engine/spec_overlap.py, through
  :class:`~.inprocess.InProcessDrafter`'s ``propose_moved``): while the rule builds no tree, greedy rounds are
  launched from the device's outcome of the round before, as sync's are, and this core only hears of them
  afterwards (:meth:`DraftCore.moved_round` per launch, :meth:`DraftCore.commit_moved` once they are
  committed). Every ``MOVED_PER_MEASURE``-th round goes through :meth:`speculate` again, with the shadow fork,
  so the hit rate (and with it the rule's choice) stays measured.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..layers.sampling import fit_vocab, probs_from_logits, sample_from_probs
from ..runner.feed import Feed
from ..runner.graph_tools import captures
from ..spec.adaptive import RANK_WINDOW, Adaptive, BuildRule
from ..spec.fanout import saguaro_top
from ..spec.saguaro import saguaro_rescale
from ..spec.spec_cache import SpeculationCache
from ..spec.status import RowStatus
from ..transfer import download, upload
from .loop import LoopSampler, draft_loop
from .messages import Config, Prefill, Speculate, SpeculateReply
from .tree_build import TreeBuilder, TreeRow

log = logging.getLogger(__name__)

SHADOW_EVERY = 8            # rounds drafted like sync on the device: the shadow fork on every Nth only
MOVED_PER_MEASURE = 16      # overlapped rounds (engine/spec_overlap.py) between two measured rounds


def shadow_fork(drafted: list[int], candidates: list[list[int]], width: int) -> list[list[int]]:
    """The shadow fork of a row drafted without a tree: at each depth i, the draft's top ``width``
    candidates (``candidates[i]``) without the drafted token, at most ``width - 1`` of them (the branches
    a tree would have forked there)."""
    return [[c for c in candidates[i] if c != d][: width - 1] for i, d in enumerate(drafted)]


class ProtocolError(RuntimeError):
    """The target's request does not match what the draft knows (a bug on one side)."""


@dataclass(slots=True)
class DraftSeq:
    tokens: list[int]
    temperature: float
    top_k: int
    top_p: float
    kv_valid: int = 0
    spec: list[int] = field(default_factory=list)
    status: RowStatus = RowStatus.NONE     # how the speculation being verified was produced
    num_draft: int = 0
    ranked: list[list[int]] | None = None  # previous fork candidates per depth (for the power law)
    shadow: list[list[int]] | None = None  # the JIT's candidates per depth (hit rate without a tree)
    skipped: bool = False                  # the build rule built no tree for this row's current round


@dataclass(slots=True)
class DeviceRound:
    """A round drafted like sync whose tokens stay on the draft's device (:meth:`DraftCore.speculate`,
    ``on_device``): status [B] (all JIT), tokens [B, K] int64, q [B, K, V] (None when every row is greedy)."""

    status: np.ndarray
    tokens: torch.Tensor
    probs: torch.Tensor | None


@dataclass(slots=True)
class _Unsettled:
    """The drafted tokens of a device round, on their way to the host (read at the next command)."""

    host: torch.Tensor                  # [B, K + K * W] (pinned; valid once ``event`` has completed)
    event: object
    seq_ids: list[int]
    want: list[int]
    width: int = 0                      # W: the shadow fork's candidates per step (0: none this round)


class DraftCore:
    def __init__(self, runner, device: torch.device, cfg: Config, capture: bool | None = None):
        self.runner, self.device = runner, torch.device(device)
        self.capture = capture if capture is not None else bool(getattr(getattr(runner, "graph", None), "capture", False))
        self.seqs: dict[int, DraftSeq] = {}
        self.cache = SpeculationCache()
        self._pending: list[tuple[int, list[int], RowStatus]] = []
        self.last_build_s = 0.0
        self._round: dict | None = None      # the round in progress (for the build rule's round times)
        self.tree: TreeBuilder | None = None
        self._unsettled: _Unsettled | None = None
        self.cfg = cfg
        self.forget()          # device_rounds: rounds drafted like sync with their tokens left on the device;
        self.configure(cfg)    # moved_rounds: overlapped rounds since the last measured one (moved_round)

    def configure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if self.tree is not None:
            self.tree.complete()
        self.cache.clear()
        self._pending = []
        self._unsettled = None
        self.forget(counters=False)
        self.tree = None
        if cfg.async_mode and hasattr(self.runner, "blocks"):
            self.tree = TreeBuilder(self.runner, self.device, cfg.vocab_size, self.cache,
                                    cfg.max_batch_size * max(sum(cfg.fan_out_hit), 1), cfg.k, self.capture,
                                    cfg.geometric)

    def forget(self, counters: bool = True) -> None:
        """Drop what was measured (acceptance per kind of round, hit rate, round times; with ``counters`` the
        counts of rounds too): the build rule starts over, exploring the tree first. Warm-up calls it after
        its dummy prompts (engine/warmup.py)."""
        cfg = self.cfg
        self.adaptive = Adaptive(cfg.k, sum(cfg.fan_out_hit), cfg.vocab_size, cfg.geometric,
                                 cfg.fan_out_hit, cfg.fan_out_miss, cfg.fan_out_fast)
        self.rule = BuildRule()
        self._round = None
        self.choice = True                  # the build rule's latest choice (a tree; at first: explore it)
        self.force_tree: bool | None = None     # warm-up: the rule's choice, imposed (None: the rule decides)
        self.moved_rounds, self._moved_t = 0, None
        if counters:
            self.counts = {s: 0 for s in RowStatus}
            self.build_time, self.builds = 0.0, 0
            self.device_rounds = self.moved_total = 0

    # --- helpers ------------------------------------------------------------------------------
    def _forward(self, feeds: list[Feed], device_tokens=None) -> torch.Tensor:
        """Draft logits [rows, V] over the target's vocabulary (layers.sampling.fit_vocab)."""
        return fit_vocab(self.runner.forward(feeds, device_tokens), self.cfg.vocab_size)

    @staticmethod
    def _row_params(seqs: list[DraftSeq], dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool, bool]:
        """Each row's temperature [N] float32, top-k [N] int64 and top-p [N] float32 on ``dev`` (one upload),
        and whether any row filters (top-k / top-p) and whether any is greedy (known on the host)."""
        host = upload([[s.temperature, s.top_k, s.top_p] for s in seqs], dev, torch.float64)
        return (host[:, 0].float(), host[:, 1].long(), host[:, 2].float(),
                any(s.top_k > 0 or s.top_p < 1 for s in seqs), any(s.temperature == 0 for s in seqs))

    def _sample(self, logits: torch.Tensor, seqs: list[DraftSeq], top: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits [N, V]; row n uses seqs[n]'s sampling parameters and Saguaro-rescales its top[n]
        probabilities (when sampler_x is set). Returns tokens [N] and the q they came from [N, V]
        (None when every row is greedy: argmax on the device, no vocabulary-wide work)."""
        if all(s.temperature == 0 for s in seqs):
            return logits.argmax(-1), None
        dev = logits.device
        temp, top_k, top_p, filtered, any_greedy = self._row_params(seqs, dev)
        probs = probs_from_logits(logits, temp, top_k, top_p, filtered=filtered, any_greedy=any_greedy)
        if self.cfg.sampler_x is not None and self.cfg.async_mode:
            probs = saguaro_rescale(probs, upload(top, dev, torch.int64),
                                    self.cfg.sampler_x, max(top, default=0))
        u = upload(torch.rand(len(seqs), generator=self.gen), dev)
        return sample_from_probs(probs, u), probs

    def _loop_sampler(self, seqs: list[DraftSeq], K: int, top: list[int], width: int = 0) -> LoopSampler:
        """The JIT loop's sampler: argmax for greedy rows only; else each row's parameters, uniforms drawn
        now from the draft's generator, and Saguaro's rescale (async mode, sampler_x set). ``width`` > 1:
        each step's top-``width`` candidates come back too (the shadow fork)."""
        if all(s.temperature == 0 for s in seqs):
            return LoopSampler(greedy=True, top_width=width)
        dev = self.device
        saguaro = self.cfg.sampler_x is not None and self.cfg.async_mode
        temp, top_k, top_p, filtered, any_greedy = self._row_params(seqs, dev)
        return LoopSampler(
            False, temp, top_k, top_p, upload(torch.rand((len(seqs), K), generator=self.gen), dev),
            filtered=filtered, any_greedy=any_greedy, saguaro_c=self.cfg.sampler_x if saguaro else None, saguaro_top=tuple(top) if saguaro else (), top_width=width)

    def _fits(self, needs: dict[int, int]) -> set[int]:
        """The sequences (in order) whose K/V growth to needs[seq] tokens fits the free pool."""
        free, ok = self.runner.num_free_blocks, set()
        blocks = getattr(self.runner, "blocks", None)
        for sid, n in needs.items():
            extra = blocks.extra_blocks(sid, n) if blocks is not None else 0
            if extra <= free:
                free -= extra
                ok.add(sid)
        return ok

    def _build_now(self, batch: int) -> bool:
        """The build rule's choice for this round's batch (async mode with a paged runner only)."""
        if self.tree is None:
            return False
        if self.force_tree is not None:
            self.rule.decisions[self.force_tree] += 1
            return self.force_tree
        if self.cfg.tree_policy == "always":
            self.rule.decisions[True] += 1
            return True
        o, k = self.adaptive.outcomes, self.cfg.k
        prior = 1.0 + k * 0.5
        tok_jit = o.tokens_per_round(RowStatus.JIT, prior)
        tok_hit = o.tokens_per_round(RowStatus.HIT, tok_jit)
        tok_miss = o.tokens_per_round(RowStatus.FAST, 1.0) if self.cfg.backup == "fast" else tok_jit
        return self.rule.build(batch, tok_hit, tok_miss, tok_jit)

    # --- commands -----------------------------------------------------------------------------
    def free(self, seq_ids: list[int]) -> None:
        for sid in seq_ids:
            self.seqs.pop(sid, None)
            self.cache.drop(sid)
            self.runner.free(sid)

    def finish(self) -> float | None:
        """Wait for the build in flight, if any, and cache its trees (the build's one host sync)."""
        if self.tree is None:
            return None
        s = self.tree.complete(self.seqs)
        if s is not None:
            self.last_build_s = s
            self.adaptive.build_s.add(s)
            self.build_time += s
            self.builds += 1
        return s

    def prefill(self, msg: Prefill) -> None:
        """Cache the sequences' tokens; in async mode also launch their first tree (keys k = -2)."""
        self.finish()
        self._settle()
        self._moved_t = None
        self.free(msg.seq_ids)
        if self._round is not None:
            self._round["untimed"] = True              # this round's time is not a decode round's
        for i, sid in enumerate(msg.seq_ids):
            self.seqs[sid] = DraftSeq(list(msg.tokens[i]), msg.temperature[i], msg.top_k[i], msg.top_p[i])
        fits = self._fits({sid: len(t) for sid, t in zip(msg.seq_ids, msg.tokens)})
        rows = [i for i, sid in enumerate(msg.seq_ids) if sid in fits and msg.tokens[i]]
        if not rows:
            return
        tree = self.tree is not None and self.choice                  # the build rule's latest choice
        feeds = [Feed(msg.seq_ids[i], msg.tokens[i], 0, num_logits=1 if tree and msg.k[i] > 0 else 0) for i in rows]
        logits = self._forward(feeds)                                         # [rows with logits, V]
        for i in rows:
            self.seqs[msg.seq_ids[i]].kv_valid = len(msg.tokens[i])
        tree_rows = [i for i in rows if tree and msg.k[i] > 0]
        for i in rows:
            self.seqs[msg.seq_ids[i]].skipped = not tree
        if tree_rows:
            self._prefill_trees(msg, tree_rows, logits)

    def _prefill_trees(self, msg: Prefill, tree_rows: list[int], logits: torch.Tensor) -> None:
        """First trees after PREFILL: roots = the top-budget tokens after the last prompt token."""
        budget = sum(self.cfg.fan_out_hit)
        rows = [TreeRow(msg.seq_ids[i], len(msg.tokens[i]), r, [budget], [-2], len(msg.tokens[i]), msg.k[i],
                        msg.temperature[i] > 0) for r, i in enumerate(tree_rows)]
        self._launch(rows, logits, [-1] * len(tree_rows))

    def _launch(self, rows: list[TreeRow], logits: torch.Tensor, exclude: list[int]) -> None:
        keep = self.tree.room(rows)
        if len(keep) < len(rows):
            log.info("draft KV pool full: %d of %d trees skipped this round", len(rows) - len(keep), len(rows))
        if not keep:
            return
        sampled = any(r.sampled for r in keep)
        sample = None
        if sampled:
            seqs = [self.seqs[r.seq_id] for r in keep]
            top = saguaro_top(self.adaptive.fan_out(RowStatus.HIT))

            def sample(lg, step, branch_rows):
                return self._sample(lg, [seqs[i] for i in branch_rows], [top[min(step, len(top) - 1)]] * len(branch_rows))
        self.tree.launch(keep, logits, exclude, sample)

    def speculate(self, msg: Speculate, on_device: bool = False) -> SpeculateReply | DeviceRound:
        """Answer a round at once: cache hits, then the backup for the rows that missed. ``on_device`` (the
        drafter shares the target's process): a round drafted like sync keeps its tokens on the device
        (a :class:`DeviceRound`; :meth:`_device_round` says when)."""
        self.finish()
        self._settle()
        self._moved_t = None
        B = len(msg.seq_ids)
        self._end_round(B)
        seqs = [self._advance(msg, b) for b in range(B)]
        want = msg.k
        if msg.verify_us > 0:
            self.adaptive.verify_s.add(msg.verify_us * 1e-6)
        if on_device and (fast := self._device_round(msg, seqs)) is not None:
            return fast
        K = max(want, default=0)
        tokens = np.zeros((B, K), dtype=np.int64)
        status = np.full(B, int(RowStatus.NONE), dtype=np.int64)
        q: dict[int, torch.Tensor] = {}
        found = self.cache.get(msg.seq_ids, msg.k_prev, msg.recovery, msg.num_tokens, want) \
            if self.cfg.async_mode else [None] * B
        for b, f in enumerate(found):
            if f is None or (seqs[b].temperature > 0 and f.entry.probs is None):
                continue
            n = want[b]
            tokens[b, :n] = f.entry.tokens[f.index, :n]
            status[b] = RowStatus.HIT
            if seqs[b].temperature > 0:
                q[b] = f.entry.probs[f.index, :n]
        miss = [b for b in range(B) if want[b] > 0 and status[b] == RowStatus.NONE]
        jit_rows = []
        if miss:
            backup = self._backup(sum(w > 0 for w in want), len(miss))
            asked = [b for b in miss if backup == "jit" or seqs[b].skipped]    # no tree on purpose: draft like sync
            jit_rows = self._jit(msg, seqs, asked, tokens, q) if asked else []
            for b in miss:
                if b in jit_rows:
                    status[b] = RowStatus.JIT
                else:                                   # fast, or no KV room: uniform tokens, uniform q
                    tokens[b, : want[b]] = torch.randint(0, self.cfg.vocab_size, (want[b],), generator=self.gen).numpy()
                    status[b] = RowStatus.FAST
        need = [b for b in range(B) if seqs[b].temperature > 0 and status[b] in (RowStatus.HIT, RowStatus.JIT)]
        probs = None
        if need:
            probs = torch.zeros((len(need), K, self.cfg.vocab_size), dtype=torch.float32, device=self.device)
            for i, b in enumerate(need):
                probs[i, : want[b]] = q[b]
        self._record_round(seqs, want, status, jit=bool(jit_rows))
        if self.cfg.async_mode:
            self._pending = [(msg.seq_ids[b], tokens[b, : want[b]].tolist(), RowStatus(int(status[b])))
                             for b in range(B) if want[b] > 0]
        return SpeculateReply(status, tokens, probs, int(self.last_build_s * 1e6))

    def _device_round(self, msg: Speculate, seqs: list[DraftSeq]) -> DeviceRound | None:
        """Draft every row like sync, tokens left on the device, when nothing else is needed this round: no
        row can hit (the build rule built no tree for any row that wants drafts: their cache entries are
        gone, :meth:`decide`) and all fit the draft's KV pool. None: the general path. The host copy of the
        tokens (and, every SHADOW_EVERY-th round, of each step's top candidates: the shadow fork) is read at
        the next command (:meth:`_settle`), or by :meth:`launch` if the rule turns to a tree meanwhile."""
        want, B = msg.k, len(msg.seq_ids)
        if self.tree is None or not any(want) or not all(s.skipped for s, w in zip(seqs, want) if w):
            return None
        if self.cache.entries and any(sid in self.cache.entries for sid in msg.seq_ids):
            return None
        drafted = [b for b in range(B) if want[b]]
        if len(self._fits({msg.seq_ids[b]: len(seqs[b].tokens) + want[b] - 1 for b in drafted})) < len(drafted):
            return None
        t0 = time.perf_counter()
        K = max(want)
        top = saguaro_top(self.adaptive.fan_out(RowStatus.JIT))
        catch_up = [Feed(sid, s.tokens[s.kv_valid:], s.kv_valid) if w else Feed(sid, [0], 0, dummy=True)
                    for sid, s, w in zip(msg.seq_ids, seqs, want)]
        measured = self.moved_rounds >= MOVED_PER_MEASURE          # after overlapped rounds: this one measures
        width = self._shadow_width() if measured or self.device_rounds % SHADOW_EVERY == 0 else 0   # the hit rate
        self.moved_rounds = 0
        toks, probs, tops = draft_loop(self.runner, catch_up, [len(s.tokens) for s in seqs], list(want),
                                       self._loop_sampler(seqs, K, top, width), self.cfg.vocab_size)
        self.device_rounds += 1
        host, event = download(toks if tops is None else torch.cat([toks, tops.reshape(B, -1)], 1))
        self._unsettled = _Unsettled(host, event, list(msg.seq_ids), list(want), width if tops is not None else 0)
        status = np.full(B, int(RowStatus.NONE), dtype=np.int64)
        status[drafted] = int(RowStatus.JIT)
        for b in drafted:
            seqs[b].kv_valid = len(seqs[b].tokens)
        self._record_round(seqs, want, status, jit=True, untimed=measured)   # among overlapped ones: not sync's time
        self._pending = [(msg.seq_ids[b], None, RowStatus.JIT) for b in drafted]     # tokens: from _settle
        self.adaptive.jit_s.add(time.perf_counter() - t0)
        return DeviceRound(status, toks, probs)

    def _settle(self) -> None:
        """The last device round's drafted tokens, now on the host: each row's speculative K/V tokens
        (``spec``), its shadow fork (on a sampling round) and the pending build jobs get them. Waits only
        for the draft loop's copy."""
        u, self._unsettled = self._unsettled, None
        if u is None:
            return
        if u.event is not None:
            u.event.synchronize()
        K = u.host.shape[1] // (1 + u.width)
        drafted = {}
        for sid, w, row in zip(u.seq_ids, u.want, u.host.tolist()):
            s = self.seqs.get(sid)
            if not w or s is None:
                continue
            drafted[sid] = row[:w]
            s.spec = row[: w - 1]
            if u.width:
                s.shadow = shadow_fork(row[:w], [row[K + i * u.width: K + (i + 1) * u.width] for i in range(w)],
                                       u.width)
        self._pending = [(sid, drafted.get(sid) if d is None else d, st) for sid, d, st in self._pending]

    def moved_round(self, batch: int) -> None:
        """The engine's overlapped pipeline launched a round drafted like sync for ``batch`` rows (no message:
        :class:`~.inprocess.InProcessDrafter` drafts it on this core's runner). Launches follow each other one
        round apart, so the time between two (same batch, no graph captured between) is a sync round's time."""
        self.moved_rounds += 1
        self.moved_total += 1
        self.counts[RowStatus.JIT] += batch
        now, cap = time.perf_counter(), captures()
        last, self._moved_t = self._moved_t, (now, batch, cap)
        if self.tree is not None and last is not None and last[1:] == (batch, cap):
            self.rule.observe_round(batch, "sync", now - last[0])

    def commit_moved(self, rows: list[tuple[int, list[int], int, int]], outcomes: list[tuple[int, int]]) -> None:
        """Overlapped rounds were committed since this core last heard from the target. rows: (seq_id, the
        committed tokens it has not been told of, how many there are in all, how many have K/V in the runner)
        per sequence; outcomes: (accepted, drafted) per row and round, for the JIT's acceptance statistics.
        Their K/V was written by the overlapped loops, so nothing is caught up again; the next
        :meth:`speculate` sees no new tokens for these rows."""
        self._settle()
        for accepted, drafted in outcomes:
            self.adaptive.observe(RowStatus.JIT, accepted, drafted)
        done = set()
        for sid, new, total, kv in rows:
            s = self.seqs.get(sid)
            if s is None:
                continue
            s.tokens.extend(new)
            if len(s.tokens) != total:
                raise ProtocolError(f"sequence {sid}: the draft has {len(s.tokens)} tokens, the target {total}")
            s.kv_valid, s.spec = min(kv, total - 1), []
            s.status, s.shadow, s.ranked = RowStatus.NONE, None, None
            done.add(sid)
        self._pending = [j for j in self._pending if j[0] not in done]
        self._round = None

    def _shadow_width(self) -> int:
        """Candidates per depth the shadow fork takes: the widest the JIT's fan-out would fork, plus the drafted one."""
        return max(self.adaptive.fan_out(RowStatus.JIT)[:-1], default=0) + 1

    def _record_round(self, seqs: list[DraftSeq], want: list[int], status: np.ndarray, jit: bool,
                      untimed: bool = False) -> None:
        """How each row's speculation of the round now answered was produced, and the round's start (for the
        build rule's round times; ``untimed``: this round's time is not its kind's)."""
        for s, w, st in zip(seqs, want, status):
            s.status, s.num_draft = RowStatus(int(st)), w
            self.counts[s.status] += 1
        self._round = {"t": time.perf_counter(), "batch": len(seqs), "built": False, "jit": jit,
                       "hits": bool((status == RowStatus.HIT).any()), "untimed": untimed,
                       "captures": captures()}

    def _end_round(self, batch: int) -> None:
        """The round that ends now: its time goes to the build rule under its kind."""
        r, now = self._round, time.perf_counter()
        if r is None or r["untimed"] or self.tree is None:
            return
        if r["built"]:
            kind = "tree_miss" if r["jit"] else "tree_hit"
        elif not r["hits"]:
            kind = "sync"
        else:
            return                                      # a tree from before, none now: a transition
        self.rule.observe_round(r["batch"], kind, now - r["t"], one_time=captures() != r["captures"])

    def _advance(self, msg: Speculate, b: int) -> DraftSeq:
        """Apply row b's new committed tokens and record the previous round's outcome."""
        sid, k = msg.seq_ids[b], msg.k_prev[b]
        s = self.seqs.get(sid)
        if s is None:
            raise ProtocolError(f"sequence {sid}: SPECULATE before PREFILL")
        if s.status is not RowStatus.NONE and k >= 0:
            self.adaptive.observe(s.status, k, s.num_draft)
        rec = msg.recovery[b]
        if s.ranked is not None:
            depth = 0 if k == -2 else k
            if 0 <= depth < len(s.ranked):
                cands = s.ranked[depth]
                self.adaptive.observe_rank(cands.index(rec) if rec in cands else RANK_WINDOW)
            s.ranked = None
        if self.tree is not None:                       # the hit rate: from the tree, or the shadow fork
            e = self.cache.entries.get(sid)
            if e is not None and e.built_len + (k + 1 if k >= 0 else 1) == msg.num_tokens[b]:
                self.rule.observe_hit(bool(((e.keys[:, 0] == k) & (e.keys[:, 1] == rec)).any()))
            elif s.shadow is not None and 0 <= k < len(s.shadow):
                fan = self.adaptive.fan_out(RowStatus.JIT)
                self.rule.observe_hit(rec in s.shadow[k][: fan[k]])
        s.shadow = None
        s.tokens.extend(msg.new_tokens[b])
        if len(s.tokens) != msg.num_tokens[b] or s.tokens[-1] != msg.recovery[b]:
            raise ProtocolError(f"sequence {sid}: the draft has {len(s.tokens)} tokens ending in {s.tokens[-1:]}, "
                                f"the target {msg.num_tokens[b]} ending in {msg.recovery[b]}")
        tail, m = s.tokens[s.kv_valid:], 0
        while m < len(s.spec) and m < len(tail) and s.spec[m] == tail[m]:
            m += 1
        s.kv_valid = min(s.kv_valid + m, len(s.tokens) - 1)
        s.spec = []
        s.temperature, s.top_k, s.top_p = msg.temperature[b], msg.top_k[b], msg.top_p[b]
        return s

    def _backup(self, num_rows: int, num_miss: int) -> str:
        if not self.cfg.async_mode:
            return "jit"
        if self.cfg.backup == "auto":
            return self.adaptive.backup_for(num_rows, num_miss)
        return self.cfg.backup

    def _jit(self, msg: Speculate, seqs: list[DraftSeq], rows: list[int], tokens: np.ndarray,
             q: dict[int, torch.Tensor]) -> list[int]:
        """Draft want[b] tokens for the given rows only (draft_loop: steps fed on the device, one host
        sync at the end). Returns the rows served (those whose K/V fits). In async mode it also keeps
        the shadow fork: the top candidates at each depth, for the hit rate a tree would have had."""
        t0 = time.perf_counter()
        want = msg.k
        fits = self._fits({msg.seq_ids[b]: len(seqs[b].tokens) + want[b] - 1 for b in rows})
        rows = [b for b in rows if msg.seq_ids[b] in fits]
        if not rows:
            return rows
        top = saguaro_top(self.adaptive.fan_out(RowStatus.JIT))
        act = [seqs[b] for b in rows]
        K = max(want[b] for b in rows)
        catch_up = [Feed(msg.seq_ids[b], seqs[b].tokens[seqs[b].kv_valid:], seqs[b].kv_valid) for b in rows]
        # the shadow fork: top candidates at each depth (the drafted token is removed on the host)
        width = self._shadow_width() if self.tree is not None else 0
        toks, probs, tops = draft_loop(self.runner, catch_up, [len(s.tokens) for s in act], [want[b] for b in rows],
                                       self._loop_sampler(act, K, top, width), self.cfg.vocab_size)
        R, Kj = toks.shape
        both = toks if tops is None else torch.cat([toks, tops.reshape(R, -1)], 1)
        both = both.cpu().numpy()                   # host sync: the reply goes to the host
        for r, b in enumerate(rows):
            s = seqs[b]
            tokens[b, : want[b]] = both[r, : want[b]]
            s.kv_valid, s.spec = len(s.tokens), tokens[b, : want[b] - 1].tolist()
            if tops is not None:
                s.shadow = shadow_fork(tokens[b, : want[b]].tolist(), both[r, Kj:].reshape(Kj, -1).tolist(), width)
            if s.temperature > 0:
                q[b] = probs[r, : want[b]]
        self.adaptive.jit_s.add(time.perf_counter() - t0)
        return rows

    def build(self) -> None:
        """Launch the glue forward, fork and tree decode for the rows of the last request (async mode),
        unless the build rule says to draft like sync this round. Nothing here waits for the device."""
        if self.decide():
            self.launch()

    def decide(self) -> bool:
        """The build rule's choice for the rows of the last request (host work only): True when a tree is to
        be launched (:meth:`launch`); False drops the pending rows (drafting like sync: nothing to launch)."""
        jobs = [(sid, d, st) for sid, d, st in self._pending if sid in self.seqs]
        if not jobs or self.tree is None:
            self._pending = []
            return False
        choice = self.choice = self._build_now(len(jobs))
        for sid, _, _ in jobs:
            self.seqs[sid].skipped = not choice
        self._pending = jobs if choice else []
        if not choice:                                  # their entries served this round: none can hit again
            for sid, _, _ in jobs:
                self.cache.drop(sid)
        return choice

    def launch(self) -> None:
        """The tree for the rows :meth:`decide` kept (the glue forward, fork and tree decode, launched)."""
        if any(d is None for _, d, _ in self._pending):     # a device round's tokens: read them now
            self._settle()
        jobs, self._pending = [j for j in self._pending if j[1] is not None], []
        if not jobs:
            return
        fits = self._fits({sid: len(self.seqs[sid].tokens) + len(d) for sid, d, _ in jobs})
        jobs = [j for j in jobs if j[0] in fits]
        feeds = []
        for sid, d, _ in jobs:
            s = self.seqs[sid]
            start = min(s.kv_valid, len(s.tokens) - 1)
            feeds.append(Feed(sid, s.tokens[start:] + d, start, num_logits=len(d) + 1))
        if not feeds:
            return
        logits = self._forward(feeds)                                            # [sum(k_b + 1), V]
        K = self.cfg.k
        rows, exclude, g = [], [], 0
        for sid, d, st in jobs:
            s, L = self.seqs[sid], len(self.seqs[sid].tokens)
            s.kv_valid, s.spec = L, list(d)
            lst = self.adaptive.fan_out(st)
            fan = lst[: len(d)] + [lst[K]]          # a shorter row: its all-accepted bucket is lst[K]
            rows.append(TreeRow(sid, L, g, fan, list(range(len(d) + 1)), L, len(d), s.temperature > 0))
            exclude += d + [-1]
            g += len(d) + 1
        self._launch(rows, logits, exclude)
        if self._round is not None:
            self._round["built"] = True

    def summary(self) -> dict:
        c = self.counts
        looked = c[RowStatus.HIT] + c[RowStatus.JIT] + c[RowStatus.FAST]
        return {"rows": looked, "hits": c[RowStatus.HIT], "jit": c[RowStatus.JIT], "fast": c[RowStatus.FAST],
                "hit_rate": c[RowStatus.HIT] / looked if looked else 0.0,
                "avg_draft_step_ms": 1e3 * self.build_time / self.builds if self.builds else 0.0,
                "fan_out_hit": self.adaptive.fan_out(RowStatus.HIT), "r": self.adaptive.r,
                "p_hit": self.rule.p_hit.get(0.0), "tree_rounds": self.rule.decisions[True],
                "sync_rounds": self.rule.decisions[False], "device_rounds": self.device_rounds,
                "moved_rounds": self.moved_total}
