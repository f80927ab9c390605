#!/usr/bin/env bash
# Why SSD without trees loses to sync at the SmolLM2 size (bench/gpu/NOTES.md, "New defects found" 1), ~2 min:
# bench/gpu/profile_step.py --gaps on the SmolLM2 shape with the shipped draft's shape (synthetic:smollm2-135m-4l,
# random weights: every round misses, so the build rule drafts without trees), b = 1 and 16, K = 2:
# async (tree_policy auto), sync and AR. Each case: ms/step, kernels per step, GPU busy, the largest idle gaps,
# the host calls that wait for the device, and the host's top functions (cProfile). Logs go to $OUT/gaps_*.log.
set -u
export PYTHONPATH=$PWD/backend${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gaps}; mkdir -p "$OUT"
PY=${SYS_PY:-python3}
DEV=${DEV:-cuda:0}
P="$PY bench/gpu/profile_step.py --gaps --device $DEV --target synthetic:smollm2-135m --prompt-len 128"
D="--draft synthetic:smollm2-135m-4l --k 2"
run() {  # name timeout args...
  local name=$1 t=$2; shift 2
  echo "=== $name"
  timeout "$t" $P "$@" > "$OUT/gaps_$name.log" 2>&1; echo "exit $?"
  grep -E "^(PROFILE|GRAPH|GPU IDLE|HOST WAITS)|^  +[0-9.]+  " "$OUT/gaps_$name.log" | cut -c1-200
  grep -A22 "^HOST (cProfile" "$OUT/gaps_$name.log" | grep -E "^ +[0-9]" | head -12 | cut -c1-160
}
for b in ${BS:-1 16}; do
  run "async_b$b" 90 $D --mode async --b "$b"
  run "sync_b$b" 60 $D --mode sync --b "$b"
  run "ar_b$b" 60 --mode ar --b "$b"
done
echo "=== ssd_no_tree_gaps done in $SECONDS s"
