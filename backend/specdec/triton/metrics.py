"""The engine's state as Triton custom metrics (served on the metrics port, ``/metrics``).

Two halves, so that the engine thread never waits on Triton:

* :func:`snapshot` (engine thread, after a loop turn, at most every ``period_s`` while busy) reads
  :class:`~specdec.engine.metrics.EngineMetrics` and the scheduler into a plain dict. It only reads
  Python numbers that the step already brought to the host: no device sync, no IPC.
* :class:`TritonMetrics` (its own thread) turns the latest snapshot into ``pb_utils.MetricFamily``
  updates. Each ``set``/``increment`` is a round trip to the Triton process, so only values that
  changed are sent.

Every metric carries the labels ``model`` and ``device``. The tokens-per-round distribution is a
COUNTER per bucket (label ``tokens`` = 1 + accepted drafts, 1..K+1), not a Triton HISTOGRAM:
the 2.51 Python backend has HISTOGRAM metrics, but only ``observe(value)``, one IPC per observed
round and sequence (thousands per second on a GPU), where per-bucket counters cost at most K+1
IPCs per refresh. Sum the buckets for the count; ``specdec_spec_tokens_total`` is the sum.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

# name -> description; values from snapshot()
GAUGES = {
    "specdec_kv_free_blocks": "Free KV-cache blocks of the target engine",
    "specdec_kv_total_blocks": "KV-cache blocks of the target engine's pool",
    "specdec_running_requests": "Sequences in the engine's running batch (active sequences)",
    "specdec_waiting_requests": "Sequences admitted to the engine, waiting for a batch slot or KV room",
    "specdec_active_requests": "Requests the target holds (queued, waiting or running); capped at specdec_max_active_requests",
    "specdec_max_active_requests": "Requests the target accepts at once (engine batch + max_queued_requests); 0 = no cap",
    "specdec_acceptance_rate": "Accepted / proposed draft tokens since start",
    "specdec_mean_accepted_length": "tau: tokens committed per target forward (1 + accepted drafts) over speculative rounds since start",
    "specdec_cache_hit_rate": "SSD speculation-cache hits / lookups since start",
    "specdec_draft_connected": "1 while a draft (local or draft worker) speculates, 0 while the target decodes AR",
}
COUNTERS = {
    "specdec_generated_tokens_total": "Output tokens committed (prefill's first tokens and decode rounds)",
    "specdec_draft_tokens_total": "Draft tokens proposed to the verifier",
    "specdec_accepted_draft_tokens_total": "Draft tokens accepted by the target",
    "specdec_decode_tokens_total": "Tokens committed by decode rounds",
    "specdec_spec_rounds_total": "Sequence-rounds that verified at least one draft token",
    "specdec_spec_tokens_total": "Tokens committed by those rounds (accepted drafts + 1 each)",
    "specdec_cache_lookups_total": "SSD speculation-cache lookups",
    "specdec_cache_hits_total": "SSD speculation-cache hits",
    "specdec_draft_steps_total": "Engine rounds that ran the drafter",
    "specdec_draft_seconds_total": "Time of those draft steps (s)",
    "specdec_verify_steps_total": "Engine rounds that ran the target (verify or plain decode)",
    "specdec_verify_seconds_total": "Time of those target steps (s)",
    "specdec_ar_fallbacks_total": "Draft channel failures: the target continued in AR mode",
    "specdec_draft_attaches_total": "Times a draft worker (re)connected and the target started speculating with it",
    "specdec_preemptions_total": "Sequences preempted for KV room (recomputed later)",
    "specdec_requests_finished_total": "Requests that finished (stop or length)",
    "specdec_requests_aborted_total": "Requests aborted (cancelled, failed or shut down)",
    "specdec_requests_cancelled_total": "Requests cancelled by their client",
    "specdec_requests_rejected_total": "Requests refused with UNAVAILABLE because the target was full",
}
ROUND_BUCKETS = "specdec_tokens_per_round_total"      # COUNTER, label tokens="n"
ROUND_BUCKETS_HELP = "Sequence-rounds that committed this many tokens (label tokens = 1 + accepted drafts)"

_ENGINE_COUNTERS = {   # metric -> EngineMetrics field
    "specdec_draft_tokens_total": "drafted",
    "specdec_accepted_draft_tokens_total": "accepted",
    "specdec_decode_tokens_total": "decode_tokens",
    "specdec_spec_rounds_total": "rounds",
    "specdec_spec_tokens_total": "spec_tokens",
    "specdec_cache_lookups_total": "cache_lookups",
    "specdec_cache_hits_total": "cache_hits",
    "specdec_draft_steps_total": "draft_steps",
    "specdec_draft_seconds_total": "draft_time",
    "specdec_verify_steps_total": "verify_steps",
    "specdec_verify_seconds_total": "verify_time",
    "specdec_ar_fallbacks_total": "ar_fallbacks",
    "specdec_preemptions_total": "preemptions",
    "specdec_requests_finished_total": "requests_finished",
    "specdec_requests_aborted_total": "requests_aborted",
}


def snapshot(engine, service=None) -> dict[str, float]:
    """Every metric's value now (engine thread). ``service`` adds the request-level counts."""
    m = engine.metrics
    blocks = getattr(engine.runner, "blocks", None)
    v: dict[str, float] = {name: getattr(m, field) for name, field in _ENGINE_COUNTERS.items()}
    v.update({
        "specdec_kv_free_blocks": engine.runner.num_free_blocks,
        "specdec_kv_total_blocks": blocks.num_blocks if blocks is not None else engine.runner.num_free_blocks,
        "specdec_running_requests": len(engine.scheduler.running),
        "specdec_waiting_requests": len(engine.scheduler.waiting),
        "specdec_acceptance_rate": m.accepted / m.drafted if m.drafted else 0.0,
        "specdec_mean_accepted_length": m.spec_tokens / m.rounds if m.rounds else 0.0,
        "specdec_cache_hit_rate": m.cache_hits / m.cache_lookups if m.cache_lookups else 0.0,
        "specdec_draft_connected": 1 if engine.drafter is not None else 0,
    })
    if service is not None:
        v.update(service.counts())
    for tokens, n in dict(m.tokens_per_round_hist).items():
        v[f"{ROUND_BUCKETS}|{tokens}"] = n
    return v


class TritonMetrics:
    """Publishes snapshots as Triton metrics from a background thread (``publish`` never blocks)."""

    def __init__(self, pb_utils, model: str, device: str, period_s: float = 0.25):
        self.labels = {"model": model, "device": device}
        MF = pb_utils.MetricFamily
        # the families must outlive their metrics: keep references to both
        self._families = {n: MF(name=n, description=d, kind=MF.GAUGE) for n, d in GAUGES.items()}
        self._families.update({n: MF(name=n, description=d, kind=MF.COUNTER) for n, d in COUNTERS.items()})
        self._families[ROUND_BUCKETS] = MF(name=ROUND_BUCKETS, description=ROUND_BUCKETS_HELP, kind=MF.COUNTER)
        self._metrics = {n: f.Metric(labels=self.labels) for n, f in self._families.items() if n != ROUND_BUCKETS}
        self._sent: dict[str, float] = {}
        self.period_s = period_s
        self._last_snapshot = 0.0
        self._pending: dict | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="specdec-metrics", daemon=True)
        self._thread.start()

    # --- engine thread --------------------------------------------------------------------------
    def on_round(self, engine, service=None) -> None:
        """Take a snapshot at most every period_s while the engine has work (always when idle)."""
        now = time.monotonic()
        if engine.has_unfinished() and now - self._last_snapshot < self.period_s:
            return
        self._last_snapshot = now
        self.publish(snapshot(engine, service))

    def publish(self, values: dict[str, float]) -> None:
        with self._cond:
            self._pending = values
            self._cond.notify()

    # --- metrics thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                values, self._pending = self._pending, None
                stop = self._stop
            if values is not None:
                try:
                    self._send(values)
                except Exception:
                    log.exception("updating Triton metrics failed")
            if stop:
                return

    def _send(self, values: dict[str, float]) -> None:
        for name, v in values.items():
            last = self._sent.get(name)
            if last == v:
                continue
            metric = self._metrics.get(name)
            if metric is None:                  # a tokens-per-round bucket seen for the first time
                family, tokens = name.split("|")
                metric = self._metrics[name] = self._families[family].Metric(labels={**self.labels, "tokens": tokens})
            if name in GAUGES:
                metric.set(v)
            else:
                metric.increment(v - (last or 0))
            self._sent[name] = v

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is pending, then stop the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout_s)
