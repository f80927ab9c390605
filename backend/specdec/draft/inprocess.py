"""SSD with the draft in the target's own process: no channel, no second process time-slicing the GPU.

:class:`InProcessDrafter` drives a :class:`~.core.DraftCore` directly. The round, on one GPU:

    target thread:  propose ─ wait for the last build (its one host sync) ─ cache lookup ─ JIT the
                    missed rows (draft stream) ─ verify forward launched (target stream) ─ overlap():
                    the next build launched (draft stream) ─ verify's host sync ─ commit
    GPU:            [JIT]  [verify ........................]
                                 [glue][fork][tree steps .....]   (second CUDA stream, same GPU)

The build only launches device work (tree_steps.py: one CUDA graph for greedy trees), so one Python
thread drives both models and there is no GIL contention; the GPU runs the two streams side by side.
The lookup happens in this process, right where the tree is: a hit costs no round trip.

On CPU there are no streams: the build runs on a worker thread (:class:`DraftExecutor`), overlapping
the target's forward (torch releases the GIL inside its kernels), when there are cores the target's
torch threads leave free. Every other use of the core waits for that thread first, so the core only
ever has one user at a time. When torch's threads already take every core (its default), the draft's
work runs in the engine's thread: measured on a 2-core machine, once a second thread had run torch
work, every later forward of the target took ~40 % longer (most likely that thread's OpenMP team
competing for the cores), and a build beside the verify had no core of its own to gain from.

While the build rule drafts like sync (no tree for any row), greedy rounds go through the engine's overlapped
pipeline as sync's do (engine/spec_overlap.py): :meth:`InProcessDrafter.propose_moved` runs the draft loop on
the target's stream, fed from the device, and the core is told afterwards (:meth:`InProcessDrafter.commit`
notes each committed round; the next call that needs the core hands them over). Every
``core.MOVED_PER_MEASURE``-th round is a plain one again, which samples the hit rate (the shadow fork), so
the rule can turn back to trees.

The SIMULATED verifier (spec/simulate.py) reads its recovery tokens from here: the forked roots of the
build in flight (on the device), or the JIT's shadow fork when no tree was built.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable

import torch

from ..config import SpecConfig
from ..layers.sampling import SamplingRows
from ..spec.fanout import resolve_fan_out
from ..spec.status import RowStatus
from ..transfer import upload
from .base import Drafter, Proposal
from .core import MOVED_PER_MEASURE, DeviceRound, DraftCore
from .loop import moved_loop, moves_on
from .messages import Config, Prefill, Speculate
from .remote import proposal_q

log = logging.getLogger(__name__)


def spare_cores() -> bool:
    """Whether this process may use more cores than torch's intra-op threads take."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                              # not on Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


class DraftExecutor:
    """Where the draft's off-critical-path work runs. CUDA: in the caller's thread on a second stream
    (the work only queues kernels). CPU: one background thread when there are spare cores
    (:func:`spare_cores`), else the caller's thread. :meth:`run` is for the critical path: it waits for
    background work, then runs in the caller's thread (on the draft stream)."""

    def __init__(self, device: torch.device, threaded: bool | None = None):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.threaded = (self.stream is None and spare_cores()) if threaded is None else threaded
        self._jobs: queue.Queue | None = None
        self._busy = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if self.threaded:
            self._jobs = queue.Queue()
            self._thread = threading.Thread(target=self._loop, name="specdec-draft", daemon=True)
            self._thread.start()

    def _context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else _nullcontext()

    def _loop(self) -> None:
        if self.stream is not None:
            torch.cuda.set_device(self.device)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                with self._context():
                    job()
            except BaseException as e:              # re-raised in the engine's thread by wait()
                self._error = e
            finally:
                self._jobs.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        if self.threaded:
            self._jobs.put(job)
        else:
            with self._context():
                job()

    def wait(self) -> None:
        if self.threaded:
            q = self._jobs
            with q.all_tasks_done:
                while q.unfinished_tasks:
                    t = self._thread
                    if t is None or not t.is_alive() or sys.is_finalizing():
                        break                       # the thread is gone (interpreter exit): nothing to wait for
                    q.all_tasks_done.wait(0.05)
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def run(self, job: Callable):
        self.wait()
        with self._context():
            return job()

    def target_waits(self) -> None:
        """The target's stream waits for the draft stream's work so far (the proposal's tokens and q)."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def close(self) -> None:
        t, self._thread = self._thread, None
        if t is not None:
            self._jobs.put(None)
            if t is not threading.current_thread():
                t.join(timeout=30)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class InProcessDrafter(Drafter):
    def __init__(self, core: DraftCore, spec: SpecConfig, vocab_size: int, max_batch_size: int, max_model_len: int,
                 seed: int, device: torch.device, executor: DraftExecutor):
        self.core, self.vocab_size, self.device = core, vocab_size, torch.device(device)
        self.max_batch_size, self.max_model_len, self.seed = max_batch_size, max_model_len, seed
        self.exec = executor
        self.runner = core.runner
        self.known: set[int] = set()
        self.fresh: set[int] = set()
        self._built = False
        self._moved: dict[int, tuple] = {}     # seq_id -> (seq, old_len, accepted, drafted): its last overlapped round
        self._outcomes: list[tuple[int, int]] = []   # (accepted, drafted) of every overlapped row-round not handed over
        self._on_target = False                # draft K/V was last written on the target's stream (propose_moved)
        weakref.finalize(self, executor.close)          # a dropped engine's draft thread ends too
        self.configure(spec)

    @staticmethod
    def config_message(spec: SpecConfig, vocab_size: int, max_batch_size: int, max_model_len: int, seed: int) -> Config:
        hit, miss, fast, geometric = resolve_fan_out(spec)
        return Config(spec.k, True, hit, miss, fast, geometric, spec.sampler_x, spec.backup, vocab_size,
                      max_batch_size, max_model_len, seed, spec.tree_policy)

    def configure(self, spec: SpecConfig) -> None:
        """New settings: the core starts over (every sequence is re-prefilled lazily)."""
        self.spec = spec
        self._hand_over()
        cfg = self.config_message(spec, self.vocab_size, self.max_batch_size, self.max_model_len, self.seed)
        self.exec.run(lambda: (self.core.free(list(self.core.seqs)), self.core.configure(cfg)))
        self.known.clear()
        self.fresh.clear()

    # --- the round ----------------------------------------------------------------------------
    def prefill(self, seqs) -> None:
        """New (or resumed) sequences: queued on the draft side before the target's own prefill, so the
        two overlap (CUDA: two streams; CPU: the draft thread)."""
        self._hand_over()
        msg = Prefill.of(seqs, self.spec.k)
        self.exec.submit(lambda: self.core.prefill(msg))
        for s, t in zip(seqs, msg.tokens):
            s.draft_cached = len(t)
            self.known.add(s.seq_id)
            self.fresh.add(s.seq_id)

    def propose(self, seqs, ks: list[int], sampling: SamplingRows) -> Proposal:
        self._hand_over()
        lazy = [s for s in seqs if s.seq_id not in self.known]
        if lazy:                                  # e.g. after configure(): catch the core up first
            self.prefill(lazy)
        t0 = time.perf_counter()
        self.exec.wait()
        build_s = self.exec.run(self.core.finish)                   # the last build's one host sync
        wait_s = time.perf_counter() - t0
        ps = [s.params for s in seqs]
        msg = Speculate([s.seq_id for s in seqs], [-2 if s.seq_id in self.fresh else s.last_accepted for s in seqs],
                        [s.last_token for s in seqs], [len(s) for s in seqs], list(ks),
                        [s.tokens_from(s.draft_cached) for s in seqs], [p.temperature for p in ps],
                        [p.top_k for p in ps], [p.top_p for p in ps], 0)
        # lookup here; JIT on the draft stream (a round drafted like sync: its tokens stay on the device)
        reply = self.exec.run(lambda: self.core.speculate(msg, on_device=True))
        self.exec.target_waits()
        if self.exec.stream is not None:                  # allocated on the draft stream, read on the target's
            for t in (reply.probs, reply.tokens if isinstance(reply, DeviceRound) else None):
                if t is not None:
                    t.record_stream(torch.cuda.current_stream(self.device))
        for s in seqs:
            s.draft_cached = len(s)
            self.fresh.discard(s.seq_id)
        self._built = False
        status = [RowStatus(int(x)) for x in reply.status]
        if isinstance(reply, DeviceRound):
            tokens = reply.tokens
            q = None if sampling.all_greedy else reply.probs
        else:
            tokens = upload(reply.tokens, self.device)        # [B, K]
            q = proposal_q(reply, status, tokens, seqs, sampling, self.vocab_size, self.device)
        return Proposal(tokens, q, list(ks), status=status, wait_s=wait_s, build_s=build_s or 0.0)

    # --- rounds drafted like sync, overlapped by the engine (engine/spec_overlap.py) -----------------
    def moves(self, seqs=()) -> bool:
        """Whether the engine may launch these rows' next rounds from the device (:meth:`propose_moved`): the
        build rule drafts like sync (no tree), each row is known to the core with no cache entry, the draft's
        loop is a static-buffer program on the target's device, its pool holds two more rounds, and the next
        measured round is not due yet. Greedy rows only (sampled rows take SSD's own round: Saguaro's q)."""
        core = self.core
        if core.tree is None or core.choice or core.moved_rounds >= MOVED_PER_MEASURE \
                or not moves_on(self.runner, self.device, self.vocab_size):
            return False
        for s in seqs:
            d = core.seqs.get(s.seq_id)
            if d is None or not s.params.greedy or s.seq_id in self.fresh or s.seq_id not in self.known or not d.skipped \
                    or s.seq_id in core.cache.entries:
                return False
        room = 2 * (self.spec.k + 2)
        return not seqs or self.runner.can_hold({s.seq_id: len(s) + room for s in seqs})

    def propose_moved(self, seqs, ks: list[int], tokens0: torch.Tensor, shift: torch.Tensor, most: int,
                      sampling=None) -> Proposal:
        """Greedy drafts of a round launched from the device's outcome of the round in flight (draft/loop.py
        ``moved_loop``), on the target's stream after every draft-stream job so far."""
        self.exec.wait()                            # CPU: the draft thread is idle
        self.exec.target_waits()                    # CUDA: prefills and the last plain round come first
        self._on_target = True
        self.core.moved_round(len(seqs))
        tokens, _ = moved_loop(self.runner, seqs, ks, tokens0, shift, most, self.vocab_size)
        return Proposal(tokens, None, list(ks), status=[RowStatus.JIT] * len(seqs))

    def commit(self, seq, old_len: int, accepted: int, num_draft: int, in_flight: bool = False) -> None:
        """A round committed while the next one was in flight, or the last round of such a run: noted for the core
        (:meth:`_hand_over`); the loops wrote K/V up to its first rejected draft. Plain rounds need nothing here:
        their outcome reaches the core with the next proposal."""
        if num_draft and (in_flight or seq.seq_id in self._moved):
            self._moved[seq.seq_id] = (seq, old_len, accepted, num_draft)
            self._outcomes.append((accepted, num_draft))

    def _hand_over(self) -> None:
        """Before the core is used again: the draft stream waits for the overlapped loops (their K/V, and blocks
        they wrote that a free may hand out), and the core learns every committed token and K/V length."""
        if self._on_target and self.exec.stream is not None:
            self.exec.stream.wait_stream(torch.cuda.current_stream(self.device))
        self._on_target = False
        if not self._moved:
            return
        rows = [(s.seq_id, s.tokens_from(s.draft_cached), len(s), old + min(acc, n - 1))
                for s, old, acc, n in self._moved.values() if s.seq_id in self.known]
        for s, *_ in self._moved.values():
            s.draft_cached = len(s)
        outcomes, self._moved, self._outcomes = self._outcomes, {}, []
        self.exec.run(lambda: self.core.commit_moved(rows, outcomes))

    def overlap(self) -> None:
        """The target's verify forward is queued: launch the next speculation tree beside it."""
        if not self._built:
            self._built = True
            if self.exec.run(self.core.decide):      # host only; no tree: nothing for the draft thread/stream
                self.exec.submit(self.core.launch)

    def free(self, seq) -> None:
        """Queued behind the draft's work in flight (CUDA: at once; its blocks are reused in stream order)."""
        self._hand_over()
        self._moved.pop(seq.seq_id, None)
        if seq.seq_id in self.known:
            sid = seq.seq_id
            self.exec.submit(lambda: self.core.free([sid]))
        self.known.discard(seq.seq_id)
        self.fresh.discard(seq.seq_id)
        seq.draft_cached = 0

    def needs(self, seq, k: int) -> int:
        return 0          # the core sizes its own pool and degrades to the fast backup when it is full

    # --- SIMULATED verification ---------------------------------------------------------------
    def sim_candidates(self, seq, depth: int):
        """The recovery tokens that would be cache hits at ``depth`` for ``seq`` next round: a host list
        (the JIT's shadow fork when no tree is being built), or (roots on the device, first index,
        count, event) from the build in flight; None when there are none."""
        self._hand_over()
        core = self.core
        if core.tree is not None and core.tree.pending is None and self.exec.threaded:
            self.exec.wait()                     # CPU: the build thread must have forked first
        if core._unsettled is not None:          # a round drafted on the device: its shadow fork, on the host now
            self.exec.run(core._settle)
        if core.tree is not None:
            c = core.tree.candidates(seq.seq_id, depth)
            if c is not None:
                return c
        s = core.seqs.get(seq.seq_id)
        if s is None or s.shadow is None or not 0 <= depth < len(s.shadow):
            return None
        fan = core.adaptive.fan_out(RowStatus.JIT)
        cands = s.shadow[depth][: fan[depth]]
        return cands or None

    def hold_rule(self, choice: bool | None) -> bool:
        """Warm-up: the build rule's choice held at ``choice`` (False: draft like sync, so the overlapped rounds'
        graphs are met; None: the rule decides again). Returns whether this core has a rule (async mode)."""
        self.core.force_tree = choice
        return self.core.tree is not None

    def forget(self) -> None:
        """The core drops what it measured (DraftCore.forget): warm-up's dummy prompts must not steer it."""
        self._hand_over()
        self.exec.run(self.core.forget)

    def summary(self) -> dict:
        self._hand_over()
        self.exec.wait()
        return self.core.summary()

    def close(self, send_exit: bool = True) -> None:
        try:
            self._hand_over()
            self.exec.run(self.core.finish)
        finally:
            self.exec.close()
