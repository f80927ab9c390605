#!/usr/bin/env bash
# Run by serve_ready.sh (THEN=...) once the server is ready: perf_analyzer (--streaming, gRPC) at concurrency
# 1, 4 and 16 through client/perf_sweep.py (tokens counted from num_output_tokens), then Triton's per-model
# queue/compute times from the metrics endpoint. $OUT gets the JSON rows and the metrics text.
for c in ${CONCS:-1 4 16}; do
  echo "=== perf_analyzer c=$c"
  LD_LIBRARY_PATH=$PA_LIBS timeout ${PERF_S:-100} $PY client/perf_sweep.py -u 127.0.0.1:8001 --concurrency $c:$c:1 \
    --max-tokens ${MAXTOK:-64} --ignore-eos ${CHAT:+--chat $CHAT} ${WORDS:+--prompt-words $WORDS} --perf-analyzer $PA --json "$OUT/perf_c$c.json" 2>&1 | tail -6
done
$PY - <<'PY' | tee "$OUT/metrics_summary.txt"
import re, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8002/metrics", timeout=5).read().decode()
vals = {}
for line in text.splitlines():
    m = re.match(r'(nv_inference_(?:request_success|request_failure|count|exec_count|queue_duration_us|compute_input_duration_us|compute_infer_duration_us|compute_output_duration_us|request_duration_us))\{model="(\w+)"[^}]*\} (\S+)', line)
    if m:
        vals.setdefault(m.group(2), {})[m.group(1).replace("nv_inference_", "")] = float(m.group(3))
for model, v in sorted(vals.items()):
    n = max(v.get("request_success", 0), 1)
    print(f"{model:15} ok {v.get('request_success', 0):.0f} failed {v.get('request_failure', 0):.0f} | per request: "
          f"queue {v.get('queue_duration_us', 0) / n / 1e3:.2f} ms, compute infer {v.get('compute_infer_duration_us', 0) / n / 1e3:.2f} ms, "
          f"request {v.get('request_duration_us', 0) / n / 1e3:.2f} ms")
PY
