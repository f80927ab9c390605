"""Choosing K (draft tokens per round) from measured acceptance and costs; 0 = plain decoding.

Terms (the engine's, see spec/verify.py): a round drafts K tokens and the target verifies them in
one forward, committing the accepted prefix plus one recovery (or bonus) token.

* alpha: per-token acceptance, P(draft token i accepted | tokens before it were); under i.i.d.
  acceptance a round commits E(alpha, K) = (1 - alpha^(K+1)) / (1 - alpha) tokens on average
  (Leviathan et al. 2023, eq. 1). Estimated as accepted / (accepted + rejections), where a
  rejection is a round that stopped before its last draft token (the maximum-likelihood estimate).
* c: the cost of one draft step relative to one plain (AR) target step.
* v(K): the cost of a verify forward over K + 1 tokens relative to one AR step, modelled as
  1 + g K (g: verify growth per draft token; SmolLM2 on an H200: g ~ 0.06, session 5).

Speedup over AR of a round with K drafts: S(K) = E(alpha, K) / (c K + v(K)). :func:`choose_k`
takes the K in [1, k_max] with the largest S, or 0 when even that one is below ``min_gain``
(speculation would be slower than AR). :class:`AutoK` keeps the estimates up to date from the
engine's metrics (EMAs over committed rounds and step times) and probes speculation now and then
while it decodes plainly, so a draft that becomes useful again is noticed.

The model can be wrong where its assumptions are (i.i.d. acceptance; a draft cost linear in K, while a
round's draft has a fixed part; rows drafting fewer than K): on an H100 at batch 16 it kept speculating
at 0.47x AR (BENCHMARKS.md, seventh session). So :class:`AutoK` also keeps what speculative rounds of
each K measurably cost per committed token, and never picks a K whose cost is more than ``max_loss``
above a plain step's cost per token, whatever the model says: it takes the model's best K among the
others, or decodes plainly (the probes run the model's own choice, which keeps its figure fresh).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


def expected_tokens(alpha: float, k: int) -> float:
    """E(alpha, k): mean tokens committed by a round of k drafts (1 + accepted), i.i.d. acceptance."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is out of range: allowed [0, 1]")
    if k < 0:
        raise ValueError(f"k={k} is out of range: allowed [0, inf)")
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def speedup(alpha: float, k: int, c: float, verify_growth: float = 0.0) -> float:
    """S(k) = E(alpha, k) / (c k + 1 + g k): tokens per unit of AR-step time, relative to AR (S(0) = 1)."""
    if c < 0:
        raise ValueError(f"c={c} is out of range: allowed [0, inf)")
    if verify_growth < 0:
        raise ValueError(f"verify_growth={verify_growth} is out of range: allowed [0, inf)")
    return expected_tokens(alpha, k) / (c * k + 1.0 + verify_growth * k)


def choose_k(alpha: float, c: float, k_max: int, verify_growth: float = 0.0, min_gain: float = 1.0) -> int:
    """The K in [1, k_max] with the largest :func:`speedup`, or 0 when that speedup is below ``min_gain``.

    alpha: per-token acceptance in [0, 1]; c: draft step / AR step time (>= 0); verify_growth: g in
    v(K) = 1 + g K; min_gain: the least speedup worth speculating for (1.0: never slower than AR by
    the model's own account; a speedup of exactly min_gain is not worth it). Ties go to the smaller K."""
    if k_max < 1:
        raise ValueError(f"k_max={k_max} is out of range: allowed [1, inf)")
    if min_gain <= 0 or not math.isfinite(min_gain):
        raise ValueError(f"min_gain={min_gain} is out of range: allowed (0, inf)")
    best_k, best = 0, 0.0
    for k in range(1, k_max + 1):
        s = speedup(alpha, k, c, verify_growth)
        if s > best + 1e-12:
            best_k, best = k, s
    return best_k if best > min_gain else 0


def batch_bucket(batch: int) -> int:
    """Timings are kept per power-of-two batch size: draft and verify costs change with the batch."""
    return 1 << max(0, (batch - 1).bit_length())


@dataclass
class _Costs:
    """EMAs of one batch bucket's step times (seconds)."""
    ar: float | None = None            # a plain target step (no drafts)
    ar_token: float | None = None      # ... per row (the batch in a bucket varies: 9-16 rows share one)
    draft_step: float | None = None    # one draft step (a round's draft time / its K)
    verify_k: float | None = None      # a verify forward, and the K it had
    k: int = 0
    spec: dict = field(default_factory=dict)   # K -> [round time (draft + verify), committed tokens]: EMAs


@dataclass
class AutoK:
    """K per engine step from measurements: call :meth:`next_k` before a decode round and
    :meth:`observe` after it.

    k_max: the configured K (an upper bound); decay: EMA weight of the past per timed step;
    alpha_decay: the same per observed draft token (accepted or rejection);
    probe_every: while K is 0, every this many rounds two rounds speculate with the model's K (or the
    last useful one, or k_max) to refresh alpha and the costs (the first catches the draft up, the
    second is timed); min_gain: see :func:`choose_k`; prior_alpha / prior_weight: the acceptance
    assumed before any round (as prior_weight pseudo-tokens); default_growth: g until an AR step and
    a verify step of the same bucket have been timed; max_loss: plain steps
    whenever speculative rounds measurably cost more than (1 + max_loss)x a plain step per committed
    token (:meth:`measured_loss`); spec_decay: EMA weight of the past for that cost (lower than
    ``decay``, so that a probe moves it)."""

    k_max: int
    decay: float = 0.9
    alpha_decay: float = 0.995
    probe_every: int = 64
    min_gain: float = 1.0
    prior_alpha: float = 0.5
    prior_weight: float = 4.0
    default_growth: float = 0.06
    max_loss: float = 0.03
    spec_decay: float = 0.8
    _acc: float = field(default=0.0, init=False)
    _rej: float = field(default=0.0, init=False)
    _costs: dict = field(default_factory=dict, init=False)
    _since_probe: int = field(default=0, init=False)
    _last_useful: int = field(default=0, init=False)
    _probe: tuple = field(default=(0, 0), init=False)     # (K, rounds left) of a probe in progress
    _seen: tuple | None = field(default=None, init=False, repr=False)
    last_choice: int = field(default=-1, init=False)

    def __post_init__(self):
        if self.k_max < 1:
            raise ValueError(f"k_max={self.k_max} is out of range: allowed [1, inf)")
        if not 0.0 <= self.max_loss < 1.0:
            raise ValueError(f"max_loss={self.max_loss} is out of range: allowed [0, 1)")
        for name in ("decay", "alpha_decay", "spec_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} is out of range: allowed [0, 1)")
        if self.probe_every < 1:
            raise ValueError(f"probe_every={self.probe_every} is out of range: allowed [1, inf)")
        self._acc = self.prior_alpha * self.prior_weight
        self._rej = (1.0 - self.prior_alpha) * self.prior_weight

    # --- estimates ------------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        return self._acc / (self._acc + self._rej) if self._acc + self._rej > 0 else self.prior_alpha

    def costs(self, batch: int) -> tuple[float | None, float]:
        """(c, g) for this batch size: c is None until both a draft step and an AR step were timed."""
        t = self._costs.get(batch_bucket(batch))
        if t is None or t.ar is None or t.ar <= 0:
            return None, self.default_growth
        c = None if t.draft_step is None else t.draft_step / t.ar
        g = self.default_growth
        if t.verify_k is not None and t.k > 0:
            g = max(0.0, (t.verify_k / t.ar - 1.0) / t.k)
        return c, g

    # --- the decision ---------------------------------------------------------------------
    def next_k(self, batch: int, metrics=None) -> int:
        """K for the next round of a batch of ``batch`` rows. With the engine's ``metrics``, the
        counters are noted so that :meth:`after_step` can observe the round."""
        c, g = self.costs(batch)
        k_model = 0
        if self._probe[1]:                  # a probe's second round: the first one caught the draft up on the
            k, left = self._probe           # plain steps before it (not a steady-state time), this one is timed
            self._probe = (k, left - 1)
        elif c is None:                       # not measured yet: speculate (to time the draft) or decode (to time AR)
            t = self._costs.get(batch_bucket(batch))
            k = self.k_max if t is None or t.draft_step is None else 0
        else:
            k_model = choose_k(self.alpha, c, self.k_max, g, self.min_gain)
            k = self._best_without_loss(batch, c, g) if k_model else 0
        if k:
            self._last_useful, self._since_probe = k, 0
        else:
            self._since_probe += 1
            if self._since_probe >= self.probe_every:
                self._since_probe = 0
                k = k_model or self._last_useful or self.k_max
                self._probe = (k, 1)
        self.last_choice = k
        self._seen = None if metrics is None else (batch, k, _counters(metrics, k))
        return k

    def measured_loss(self, batch: int, k: int) -> bool:
        """Whether speculative rounds of K = ``k`` in this batch bucket measurably cost more per committed token
        than plain steps, by more than ``max_loss`` (False until both were timed)."""
        t = self._costs.get(batch_bucket(batch))
        if t is None or t.ar_token is None or k not in t.spec:
            return False
        seconds, tokens = t.spec[k]
        return seconds / tokens * (1.0 - self.max_loss) > t.ar_token

    def _best_without_loss(self, batch: int, c: float, g: float) -> int:
        """The K the model rates best among those not measured as a loss (:meth:`measured_loss`); 0 when the
        model rates none above ``min_gain``. Ties go to the smaller K, as in :func:`choose_k`."""
        rated = sorted(((speedup(self.alpha, k, c, g), -k) for k in range(1, self.k_max + 1)), reverse=True)
        for s, neg_k in rated:
            if s <= self.min_gain:
                break
            if not self.measured_loss(batch, -neg_k):
                return -neg_k
        return 0

    def observe(self, batch: int, k: int, draft_s: float, verify_s: float, accepted: int = 0, rejections: int = 0,
                timed: bool = True) -> None:
        """One engine round of ``batch`` rows that ran with (up to) ``k`` drafts: its draft and verify
        times, the draft tokens accepted and the rows that rejected one (0 and 0 for a plain step).
        timed=False: the round paid a one-time cost (a CUDA graph captured), so only its acceptance counts."""
        if batch < 1 or k < 0 or draft_s < 0 or verify_s < 0 or accepted < 0 or rejections < 0:
            raise ValueError(f"observe: batch={batch}, k={k}, draft_s={draft_s}, verify_s={verify_s}, "
                             f"accepted={accepted}, rejections={rejections}: all must be >= 0 (batch >= 1)")
        d = self.decay
        t = self._costs.setdefault(batch_bucket(batch), _Costs())
        ema = lambda old, new: new if old is None else d * old + (1 - d) * new   # noqa: E731
        if k == 0:
            if timed:
                t.ar = ema(t.ar, verify_s)
                t.ar_token = ema(t.ar_token, verify_s / batch)
            return
        if timed:
            # time and committed tokens (every row: 1 + its accepted drafts) are averaged apart: the mean of
            # per-round ratios is biased (a round that rejects everything weighs as much as one that accepts all)
            now = (draft_s + verify_s, batch + accepted)
            s, old = self.spec_decay, t.spec.get(k)
            t.spec[k] = list(now) if old is None else [s * o + (1 - s) * n for o, n in zip(old, now)]
            t.draft_step = ema(t.draft_step, draft_s / k)
            if t.k != k:
                t.verify_k, t.k = None, k
            t.verify_k = ema(t.verify_k, verify_s)
        w = self.alpha_decay ** (accepted + rejections)     # older rounds fade as tokens are observed
        self._acc = w * self._acc + accepted
        self._rej = w * self._rej + rejections

    def plain_step(self, batch: int, seconds: float, timed: bool = True) -> None:
        """The round :meth:`next_k` was last asked for ran as a plain step outside the engine's round counters
        (overlapped, engine/overlap.py) and took ``seconds``: observe it as such."""
        self._seen = None
        self.observe(batch, 0, 0.0, seconds, timed=timed)

    def spec_round(self, batch: int, k: int, draft_s: float, round_s: float, accepted: int, rejections: int,
                   timed: bool = True) -> None:
        """A speculative round of ``k`` drafts that ran overlapped (engine/spec_overlap.py): the round committed
        now was launched a step before the one :meth:`next_k` was last asked for, so the engine observes it here,
        not through :meth:`after_step` (``round_s``: the step's wall time, one round in steady state; ``draft_s``:
        the draft loop's device time)."""
        self.observe(batch, k, draft_s, max(0.0, round_s - draft_s), accepted, rejections, timed=timed)

    def after_step(self, metrics, timed: bool = True) -> None:
        """:meth:`observe` the round that :meth:`next_k` was last asked for, from the changes of the
        engine's :class:`~specdec.engine.metrics.EngineMetrics` counters since then: its draft time, its wall
        time as the round's cost, its acceptance (a row that drafted fewer than K tokens and accepted them all
        counts as a rejection: alpha is a lower bound there).
        Reads host numbers only (no device sync)."""
        if self._seen is None:
            return
        batch, k, before = self._seen
        self._seen = None
        now = _counters(metrics, k)
        d_draft, d_step, d_acc, d_rounds, d_full = (a - b for a, b in zip(now, before))
        if min(d_draft, d_step, d_acc, d_rounds, d_full) < 0:         # the metrics were reset (bench)
            return
        # the round's whole wall time (decode_time), not its draft + verify phases: the host's work around them
        # (the commit of every row, the draft's rollback) is a cost of the round too, and on a 2-core CPU at b=16 a
        # speculative round's was ~12 ms against ~0.1 ms for a plain step (BENCHMARKS.md, ninth session)
        self.observe(batch, k, d_draft, max(0.0, d_step - d_draft), d_acc, d_rounds - d_full if k else 0, timed=timed)


def _counters(m, k: int) -> tuple:
    return (m.draft_time, m.decode_time, m.accepted, m.rounds, m.tokens_per_round_hist.get(k + 1, 0))
