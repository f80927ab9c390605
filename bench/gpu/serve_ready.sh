#!/usr/bin/env bash
# Start `specdec serve` on the GPU machine and time /v2/health/ready; on failure print the tritonserver log.
# Logs (server stdout, tritonserver log) go to $OUT. Needs bench/gpu/serve_env.sh's carried packages.
#   TARGET=synthetic:llama-1b DRAFT=synthetic:llama-1b EXTRA="--draft-gpu 0" WAIT_S=240 bash bench/gpu/serve_ready.sh
set -u
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
source bench/gpu/serve_env.sh || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; W=/tmp/serve-w; rm -rf $W
$PY -m specdec.cli serve --target ${TARGET:-synthetic:llama-1b} ${DRAFT:+--draft $DRAFT} --target-gpu 0 \
  --workdir $W ${EXTRA:-} > "$OUT/serve_stdout.log" 2>&1 &
SRV=$!; T0=$SECONDS; READY=0
while [ $((SECONDS - T0)) -lt ${WAIT_S:-240} ]; do
  $PY -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)" 2>/dev/null && { READY=1; break; }
  kill -0 $SRV 2>/dev/null || break; sleep 2
done
echo "ready=$READY after $((SECONDS - T0)) s"
[ $READY = 1 ] && [ -n "${THEN:-}" ] && eval "$THEN"
# pkill -x (the process name): -f would match any command line naming tritonserver, the caller's too
kill -INT $SRV 2>/dev/null; sleep 5; kill -9 $SRV 2>/dev/null; pkill -9 -x tritonserver; pkill -9 -f triton_python_backend_stub
cp $W/*.log "$OUT/" 2>/dev/null; ls $W
echo "--- server stdout (tail)"; tail -25 "$OUT/serve_stdout.log"
echo "--- tritonserver log (tail)"; tail -40 $W/*.log 2>/dev/null | cut -c1-400
