"""The engine's state as Triton custom metrics (served on the metrics port, ``/metrics``).

``specdec_kv_free_blocks`` (gauge) shows that finished, failed and cancelled requests give their
KV blocks back; the counters mirror :class:`~specdec.engine.metrics.EngineMetrics`.
"""
from __future__ import annotations

import time

GAUGES = {
    "specdec_kv_free_blocks": "Free KV-cache blocks of the target engine",
    "specdec_running_requests": "Sequences in the engine's running batch",
    "specdec_waiting_requests": "Sequences waiting for admission",
}
COUNTERS = {   # metric -> (EngineMetrics field, description)
    "specdec_draft_tokens_total": ("drafted", "Draft tokens proposed to the verifier"),
    "specdec_accepted_draft_tokens_total": ("accepted", "Draft tokens accepted by the target"),
    "specdec_decode_tokens_total": ("decode_tokens", "Tokens committed by decode rounds"),
    "specdec_requests_finished_total": ("requests_finished", "Requests that finished (stop or length)"),
    "specdec_requests_aborted_total": ("requests_aborted", "Requests aborted (cancelled or failed)"),
}


class EngineGauges:
    """Updates Triton metrics from an engine, at most every ``period_s`` while busy (each set is an IPC)."""

    def __init__(self, pb_utils, model: str, device: str, period_s: float = 0.1):
        labels = {"model": model, "device": device}
        MF = pb_utils.MetricFamily
        # the families must outlive their metrics: keep references to both
        self._families = {n: MF(name=n, description=d, kind=MF.GAUGE) for n, d in GAUGES.items()}
        self._families.update({n: MF(name=n, description=d, kind=MF.COUNTER) for n, (_, d) in COUNTERS.items()})
        self._metrics = {n: f.Metric(labels=labels) for n, f in self._families.items()}
        self._last_values: dict[str, float] = {}
        self._last_time = 0.0
        self.period_s = period_s

    def update(self, engine) -> None:
        now = time.monotonic()
        if engine.has_unfinished() and now - self._last_time < self.period_s:
            return
        self._last_time = now
        values = {
            "specdec_kv_free_blocks": engine.runner.num_free_blocks,
            "specdec_running_requests": len(engine.scheduler.running),
            "specdec_waiting_requests": len(engine.scheduler.waiting),
        }
        for name, (field, _) in COUNTERS.items():
            values[name] = getattr(engine.metrics, field)
        for name, v in values.items():
            last = self._last_values.get(name)
            if last == v:
                continue
            if name in GAUGES:
                self._metrics[name].set(v)
            else:
                self._metrics[name].increment(v - (last or 0))
            self._last_values[name] = v
