#!/usr/bin/env bash
# Issue 18 on one GPU, in parts that each fit one 10-minute device call. The server and client packages travel as
# two archives that do not fit one call beside the repository (64 MiB): carry `.carry/ts` in one call (any GPU
# work may ride along), then `.carry/np` in the next, within ~30 s, while the machine is warm (bench/gpu/NOTES.md).
# Build the archives here first: `bash bench/gpu/serve_carry.sh`.
#   PARTS="soak"   ~6 min: 8B+1B served (in_target), perf_analyzer at concurrency 32 for 5 minutes with
#                  client/load_test.py (failed requests, RSS, KV blocks per minute; blocks back at idle; overload)
#   PARTS="faults" ~4 min: the deployment's reliability tests (bad input, 200 cancelled streams, overload, killed draft
#                  worker and killed draft instance) against servers whose models run on GPU 0 (SPECDEC_TEST_GPU=0)
#   PARTS="speed"  ~3 min: served vs in-process, both draft placements (serve_http.py), and perf_analyzer
#                  c=1/4/16 (serve_perf.sh)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
source bench/gpu/serve_env.sh || exit 1
PARTS=${PARTS:-soak}
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
T8="TARGET=synthetic:llama-8b DRAFT=synthetic:llama-1b"
if has speed; then
  for DG in -1 0; do
    echo "=== served vs in-process, draft GPU $DG (-1: in the target model)"
    timeout 200 $PY bench/gpu/serve_http.py --target synthetic:llama-8b --draft synthetic:llama-1b --mode sync --k 4 \
      --target-gpu 0 --draft-gpu $DG --max-tokens 64 --requests 8 > "$OUT/serve_http_dg$DG.log" 2>&1
    echo "exit $?"; grep -A6 "^where" "$OUT/serve_http_dg$DG.log"; pkill -9 -x tritonserver; sleep 1
  done
  echo "=== perf_analyzer c=1/4/16"
  env $T8 EXTRA="--mode sync --k 4 --max-model-len 4096" WAIT_S=120 CHAT=off THEN='bash bench/gpu/serve_perf.sh' \
    bash bench/gpu/serve_ready.sh 2>&1 | grep -v "^|\|^+\|^I1207" | head -30
fi
if has soak; then
  echo "=== soak: concurrency 32, 5 minutes, then overload by 4"
  env $T8 EXTRA="--mode sync --k 4 --max-model-len 4096" WAIT_S=120 \
    THEN='LD_LIBRARY_PATH=$PA_LIBS timeout ${SOAK_S:-400} $PY client/load_test.py --minutes ${SOAK_MIN:-5} --levels 32 --max-tokens 64 --overload 4 --perf-analyzer $PA --json $OUT/soak.json; echo "load_test exit $?"' \
    bash bench/gpu/serve_ready.sh 2>&1 | grep -v "^|\|^+\|^I1207" | grep -v '^ *"' | head -40
fi
if has faults; then
  echo "=== deployment reliability tests with every model on GPU 0"
  SPECDEC_TEST_GPU=0 timeout ${FAULTS_S:-420} $PY -m pytest -q -x -p no:cacheprovider \
    tests/triton_deploy/test_server_reliability.py 2>&1 | tee "$OUT/faults.log" | tail -25
fi
echo "=== done in $SECONDS s"
