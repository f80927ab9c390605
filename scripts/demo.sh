#!/usr/bin/env bash
# The main job on the embedded default: start `specdec serve` (Triton: preprocessing -> target with
# its draft -> postprocessing), stream one completion through the gRPC client, stop the server.
#   bash scripts/demo.sh ["prompt"] [extra `specdec serve` flags, e.g. --mode ar]
set -euo pipefail
cd "$(dirname "$0")/.."
PROMPT=${1:-"What is speculative decoding? Answer in two sentences."}
shift || true
LOG=$(mktemp -t specdec-serve.XXXXXX.log)
.venv/bin/specdec serve "$@" > "$LOG" 2>&1 &
SERVER=$!
stop() { kill -INT "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null; }
trap stop EXIT
echo "starting specdec serve (log: $LOG) ..." >&2
for _ in $(seq 600); do
  if grep -q "^ready in" "$LOG" 2>/dev/null; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then cat "$LOG" >&2; echo "specdec serve exited" >&2; exit 1; fi
  sleep 1
done
grep -q "^ready in" "$LOG" || { tail -30 "$LOG" >&2; echo "server not ready after 600 s" >&2; exit 1; }
sed -n '/^specdec serve:/,/^ready in/p' "$LOG" >&2
.venv/bin/python client/stream_client.py "$PROMPT" --max-tokens 128
