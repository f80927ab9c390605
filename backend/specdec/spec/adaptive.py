"""What the draft measures as it runs, and the two decisions it drives.

* Outcomes: each request reveals the previous round's k per sequence, so the draft knows, for
  rounds whose speculation came from the cache (hit), a JIT backup or the fast backup, the
  tokens committed per round and the per-token acceptance alpha.
* Ranks: where t* ranked among the previous round's fork candidates at its depth; their
  distribution gives the cache-miss power law 1 - p_hit(F) = F^(-r).
* Timings: the target's verify time (sent with each request), the JIT time and the build time.

Decisions: geometric fan-out lists (recomputed every ``UPDATE_EVERY`` outcomes) and the
``backup="auto"`` choice (:func:`choose_backup`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..spec.fanout import acceptance_mle, fit_power_law, geometric_fan_out
from .status import RowStatus

RANK_WINDOW = 32
UPDATE_EVERY = 64
PRIOR_ALPHA, PRIOR_R = 0.8, 1.0


def choose_backup(num_rows: int, num_miss: int, tokens_hit: float, tokens_jit: float, tokens_fast: float,
                  verify_s: float, jit_s: float) -> str:
    """Pick the backup for this round's missed rows: the one with more committed tokens per second.

    JIT drafts the num_miss rows on the critical path (round time verify_s + jit_s, tokens
    tokens_jit per missed row); fast answers at once (round time verify_s, tokens_fast per
    missed row, ~1 since random tokens are almost always rejected). Hit rows commit
    tokens_hit either way. With b rows and hit rate p, JIT is needed with probability 1 - p^b,
    so this per-round rule switches to fast above the batch size b* of the paper's Theorem 17.
    """
    if num_miss == 0:
        return "jit"
    if num_miss < 0 or num_miss > num_rows or verify_s <= 0:
        raise ValueError(f"num_miss={num_miss} of {num_rows} rows, verify_s={verify_s}")
    hit = (num_rows - num_miss) * tokens_hit
    jit = (hit + num_miss * tokens_jit) / (verify_s + max(jit_s, 0.0))
    fast = (hit + num_miss * tokens_fast) / verify_s
    return "jit" if jit >= fast else "fast"


class Ema:
    def __init__(self, value: float | None = None, weight: float = 0.1):
        self.value, self.weight = value, weight

    def add(self, x: float) -> None:
        self.value = x if self.value is None else (1 - self.weight) * self.value + self.weight * x

    def get(self, default: float) -> float:
        return default if self.value is None else self.value


@dataclass
class OutcomeStats:
    """Per RowStatus: rounds, committed tokens, and the accepted/drafted pairs for alpha."""

    rounds: dict = field(default_factory=lambda: {s: 0 for s in RowStatus})
    tokens: dict = field(default_factory=lambda: {s: 0 for s in RowStatus})
    accepted: dict = field(default_factory=lambda: {s: [] for s in RowStatus})
    drafted: dict = field(default_factory=lambda: {s: [] for s in RowStatus})

    def add(self, status: RowStatus, k: int, num_draft: int) -> None:
        self.rounds[status] += 1
        self.tokens[status] += k + 1
        self.accepted[status].append(k)
        self.drafted[status].append(num_draft)
        if len(self.accepted[status]) > 4096:              # keep a recent window
            del self.accepted[status][:2048], self.drafted[status][:2048]

    def tokens_per_round(self, status: RowStatus, default: float) -> float:
        n = self.rounds[status]
        return self.tokens[status] / n if n else default

    def alpha(self, status: RowStatus) -> float | None:
        return acceptance_mle(np.array(self.accepted[status]), np.array(self.drafted[status]))


class Adaptive:
    """The draft's running measurements and the fan-out lists they imply."""

    def __init__(self, k: int, budget: int, vocab_size: int, geometric: bool,
                 fan_out_hit: list[int], fan_out_miss: list[int], fan_out_fast: list[int]):
        self.k, self.budget, self.vocab, self.geometric = k, budget, vocab_size, geometric
        self.outcomes = OutcomeStats()
        self.rank_counts = np.zeros(RANK_WINDOW, dtype=np.int64)
        self.rank_beyond = 0
        self.verify_s, self.jit_s, self.build_s = Ema(), Ema(), Ema()
        self.since_update = 0
        self.r = PRIOR_R
        self.alpha = {RowStatus.HIT: PRIOR_ALPHA, RowStatus.JIT: PRIOR_ALPHA, RowStatus.FAST: 0.0}
        self.lists = {RowStatus.HIT: list(fan_out_hit), RowStatus.JIT: list(fan_out_miss),
                      RowStatus.FAST: list(fan_out_fast)}
        if geometric:
            self._recompute()

    def fan_out(self, status: RowStatus) -> list[int]:
        return self.lists[status]

    def observe_rank(self, rank: int) -> None:
        """Where t* ranked (0 = best) among the previous round's candidates at its depth."""
        if rank < RANK_WINDOW:
            self.rank_counts[rank] += 1
        else:
            self.rank_beyond += 1

    def observe(self, status: RowStatus, k: int, num_draft: int) -> None:
        """One outcome: the previous round of a row served with ``status`` accepted k of num_draft."""
        self.outcomes.add(status, k, num_draft)
        self.since_update += 1
        if self.geometric and self.since_update >= UPDATE_EVERY:
            self.since_update = 0
            for s in self.alpha:
                a = self.outcomes.alpha(s)
                if a is not None and len(self.outcomes.accepted[s]) >= 16:
                    self.alpha[s] = a
            r = fit_power_law(self.rank_counts, self.rank_beyond)
            if r is not None:
                self.r = r
            self._recompute()

    def _recompute(self) -> None:
        for s in self.lists:
            self.lists[s] = geometric_fan_out(self.alpha[s], self.r, self.k, self.budget, self.vocab)

    def backup_for(self, num_rows: int, num_miss: int) -> str:
        o = self.outcomes
        hit = o.tokens_per_round(RowStatus.HIT, 1.0 + self.k * PRIOR_ALPHA)
        jit = o.tokens_per_round(RowStatus.JIT, hit)
        fast = o.tokens_per_round(RowStatus.FAST, 1.0)
        verify = self.verify_s.get(0.0)
        if verify <= 0 or self.jit_s.value is None:
            return "jit"                                     # nothing measured yet: the neural backup
        return choose_backup(num_rows, num_miss, hit, jit, fast, verify, self.jit_s.get(0.0))


# --- when the tree pays: async (build a tree every round) or draft like sync ------------------------
PRIOR_P_HIT = 0.5
EXPLORE_ROUNDS = 4           # measured rounds of each kind (per batch bucket) before the rule decides
PROBE_EVERY = 64             # rounds between re-measurements of the kind not chosen (when it is close)
PROBE_MARGIN = 0.8           # ... close: its expected rate is at least this share of the chosen one's


def tree_pays(p_hit: float, batch: int, t_sync: float, t_tree_hit: float, t_tree_miss: float,
              tokens_hit: float, tokens_miss: float, tokens_sync: float) -> bool:
    """Whether building a speculation tree every round commits more tokens per second than drafting
    like sync decoding (the K draft steps on the critical path, no tree), for a batch of ``batch`` rows.

    p_hit: per-row probability that the verification outcome is in the tree; t_sync: the round time
    drafting like sync; t_tree_hit / t_tree_miss: the round time while building, when every row hit /
    when some row missed (a JIT backup on the critical path; with the fast backup the two are equal);
    tokens_*: committed tokens per row and round after a hit, after a tree miss, and drafting like
    sync. All rows hit with probability p_hit^b (paper Corollary 16), so large batches need a higher
    hit rate for the tree to pay.
    """
    if not 0.0 <= p_hit <= 1.0 or batch < 1:
        raise ValueError(f"p_hit={p_hit} must lie in [0, 1] and batch={batch} >= 1")
    if min(t_sync, t_tree_hit, t_tree_miss) <= 0 or min(tokens_hit, tokens_miss, tokens_sync) <= 0:
        raise ValueError("round times and tokens per round must be > 0")
    p_all = p_hit ** batch
    t_tree = p_all * t_tree_hit + (1.0 - p_all) * t_tree_miss
    tok_tree = p_hit * tokens_hit + (1.0 - p_hit) * tokens_miss
    return tok_tree / t_tree > tokens_sync / t_sync


def batch_bucket(batch: int) -> int:
    b = 1
    while b < batch:
        b *= 2
    return b


class BuildRule:
    """Decides per round (per batch) whether the draft builds a tree, from measured round times and hit
    rate. Round kinds: "sync" (no tree built, every row drafted on the critical path), "tree_hit" (a
    tree built, no row drafted on the critical path), "tree_miss" (a tree built, some row drafted on
    the critical path). Unmeasured kinds are explored first (the tree, then sync); afterwards the kind
    not chosen is re-measured every PROBE_EVERY rounds while its expected rate stays close."""

    def __init__(self):
        self.p_hit = Ema(PRIOR_P_HIT, weight=0.05)
        self.times: dict[tuple[int, str], Ema] = {}
        self.counts: dict[tuple[int, str], int] = {}
        self.since_probe = 0
        self.probe_left, self.probe_choice = 0, True
        self.decisions = {True: 0, False: 0}
        self.hit_samples = 0

    def observe_hit(self, hit: bool) -> None:
        """One row's outcome: in the tree (or, without a tree, among the candidates it would have forked)."""
        self.p_hit.add(1.0 if hit else 0.0)
        self.hit_samples += 1

    def observe_round(self, batch: int, kind: str, seconds: float, one_time: bool = False) -> None:
        """A round's time under its kind. one_time: the round paid a one-time cost (a CUDA graph captured
        for a shape met for the first time); its time is not the kind's and is left out, else a rarely
        built kind would look as slow as its first captures and never be chosen again."""
        if kind not in ("sync", "tree_hit", "tree_miss"):
            raise ValueError(f"round kind {kind!r}")
        if one_time:
            return
        key = (batch_bucket(batch), kind)
        self.times.setdefault(key, Ema(weight=0.2)).add(seconds)
        self.counts[key] = self.counts.get(key, 0) + 1

    def _time(self, b: int, kind: str) -> float | None:
        e = self.times.get((b, kind))
        return None if e is None or self.counts.get((b, kind), 0) < EXPLORE_ROUNDS else e.value

    def build(self, batch: int, tokens_hit: float, tokens_miss: float, tokens_sync: float) -> bool:
        if self.probe_left:                                 # a probe lasts 2 rounds: the first is a transition
            self.probe_left -= 1
            self.decisions[self.probe_choice] += 1
            return self.probe_choice
        b = batch_bucket(batch)
        th, tm, ts = self._time(b, "tree_hit"), self._time(b, "tree_miss"), self._time(b, "sync")
        if th is None and tm is None:
            choice = True                                   # explore: the tree first
        elif ts is None:
            choice = False                                  # then drafting like sync
        else:
            th, tm = th or tm, tm or th
            p = self.p_hit.get(PRIOR_P_HIT)
            args = (max(tokens_hit, 1e-6), max(tokens_miss, 1e-6), max(tokens_sync, 1e-6))
            choice = tree_pays(p, batch, ts, th, tm, *args)
            self.since_probe += 1
            if self.since_probe >= PROBE_EVERY:
                self.since_probe = 0
                p_all = p ** batch
                rate_tree = (p * args[0] + (1 - p) * args[1]) / (p_all * th + (1 - p_all) * tm)
                rate_sync = args[2] / ts
                if min(rate_tree, rate_sync) >= PROBE_MARGIN * max(rate_tree, rate_sync):
                    choice = self.probe_choice = not choice     # refresh the other kind's round time
                    self.probe_left = 1
        self.decisions[choice] += 1
        return choice
