#!/usr/bin/env bash
# Issue 18 on one GPU, in parts that each fit one 10-minute device call. The server and client packages travel as
# two archives that do not fit one call beside the repository (64 MiB): carry `.carry/ts` in one call (any GPU
# work may ride along), then `.carry/np` in the next, within ~30 s, while the machine is warm (bench/gpu/NOTES.md).
# Build the archives here first: `bash bench/gpu/serve_carry.sh`. `.carry/pt` (pytest, psutil wheels) is
# installed when the machine lacks them; `.carry/smolN` parts (bench/gpu/smollm2_carry.sh) are parked on the way.
#   PARTS="soak"    ~6 min: 8B+1B served (in_target), perf_analyzer at concurrency 32 for 5 minutes with
#                   client/load_test.py (failed requests, RSS, KV blocks per minute; blocks back at idle; overload)
#   PARTS="faults"  ~4 min: the deployment's reliability tests (bad input, 200 cancelled streams, overload, killed
#                   draft worker and killed draft instance) against servers whose models run on GPU 0 (SPECDEC_TEST_GPU=0)
#   PARTS="speed"   ~3 min: served vs in-process, both draft placements (serve_http.py), and perf_analyzer
#                   c=1/4/16 (serve_perf.sh)
#   PARTS="long"    ~2 min: perf_analyzer c=1/4/16 with ~2048-token prompts (8B+1B, sync K=4)
#   PARTS="smollm2" ~4 min: SmolLM2-135M with its shipped draft (needs every smol part parked and the
#                   drafts/smollm2-135m-draft folder): readiness, served vs in-process (both placements), perf c=1/4/16
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SYS_PY=$(command -v python3)          # the machine's python (torch, pip); serve_env puts the stub venv first
P=/tmp/persist SITE=/tmp/site PY=$SYS_PY source bench/gpu/smollm2_park.sh
source bench/gpu/serve_env.sh || exit 1
$PY -c "import pytest, psutil" 2>/dev/null || $SYS_PY -m pip install -q --no-index --no-deps --target /tmp/site \
  .carry/pt/*.whl || echo "pytest/psutil missing: carry .carry/pt"
PARTS=${PARTS:-soak}
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
T8=(TARGET=synthetic:llama-8b DRAFT=synthetic:llama-1b "EXTRA=--mode sync --k 4 --max-model-len 4096" WAIT_S=120)
# served_vs_inprocess TARGET DRAFT NAME: serve_http.py with the draft in the target model, then as its own model on GPU 0
served_vs_inprocess() {
  for DG in -1 0; do
    echo "=== $1 + $2, served vs in-process, draft GPU $DG (-1: in the target model)"
    timeout 200 $PY bench/gpu/serve_http.py --target "$1" --draft "$2" --mode sync --k 4 \
      --target-gpu 0 --draft-gpu $DG --max-tokens 64 --requests 8 > "$OUT/$3_http_dg$DG.log" 2>&1
    echo "exit $?"; grep -E "ready|^where" -A6 "$OUT/$3_http_dg$DG.log" | head -12; pkill -9 -x tritonserver; sleep 1
  done
}
# ready_then ENV...: serve_ready.sh with these settings (THEN= runs once ready); its output without progress lines
ready_then() { env "$@" bash bench/gpu/serve_ready.sh 2>&1 | grep -v "^|\|^+\|^I1207" | grep -v '^ *"' | head -40; }
if has speed; then
  served_vs_inprocess synthetic:llama-8b synthetic:llama-1b serve
  echo "=== perf_analyzer c=1/4/16"
  ready_then "${T8[@]}" CHAT=off THEN='bash bench/gpu/serve_perf.sh'
fi
if has long; then
  echo "=== perf_analyzer c=1/4/16, ~2048-token prompts (350 words of the synthetic shapes' character tokenizer)"
  ready_then "${T8[@]}" CHAT=off WORDS=350 PERF_S=150 THEN='bash bench/gpu/serve_perf.sh' OUT="$OUT/long"
fi
if has smollm2; then
  if [ "$SMOL_READY" != 1 ] || [ ! -f drafts/smollm2-135m-draft/model.safetensors ]; then
    echo "=== smollm2: skipped (weights ready: $SMOL_READY; carry drafts/smollm2-135m-draft too)"
  else
    served_vs_inprocess smollm2-135m smollm2-135m-draft smol
    echo "=== SmolLM2-135M + its draft: readiness, perf_analyzer c=1/4/16 (chat prompts)"
    ready_then TARGET=smollm2-135m DRAFT=smollm2-135m-draft EXTRA="--mode sync --k 4" WAIT_S=60 \
      THEN='bash bench/gpu/serve_perf.sh' OUT="$OUT/smol"
  fi
fi
if has soak; then
  echo "=== soak: concurrency 32, 5 minutes, then overload by 4"
  ready_then "${T8[@]}" THEN='LD_LIBRARY_PATH=$PA_LIBS timeout ${SOAK_S:-400} $PY client/load_test.py --minutes ${SOAK_MIN:-5} --levels 32 --max-tokens 64 --overload 4 --perf-analyzer $PA --json $OUT/soak.json; echo "load_test exit $?"'
fi
if has faults; then
  echo "=== deployment reliability tests with every model on GPU 0"
  SPECDEC_TEST_GPU=0 timeout ${FAULTS_S:-420} $PY -m pytest -q -p no:cacheprovider \
    tests/triton_deploy/test_server_reliability.py 2>&1 | tee "$OUT/faults.log" | tail -25
fi
# at most 8 files come back: everything in one archive
(cd "$OUT" && tar czf /tmp/serve_gpu_logs.tgz --exclude=serve_gpu_logs.tgz . && rm -rf ./* && mv /tmp/serve_gpu_logs.tgz .)
echo "=== done in $SECONDS s"
