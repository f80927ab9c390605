#!/usr/bin/env bash
# Why SSD without trees loses to sync at the SmolLM2 size (bench/gpu/NOTES.md, "New defects found" 1), ~2 min:
# bench/gpu/profile_step.py --gaps on the SmolLM2 shape with the shipped draft's shape (synthetic:smollm2-135m-4l,
# random weights: every round misses, so the build rule drafts without trees), b = 1 and 16, K = 2:
# async (tree_policy auto), sync and AR. Each case: ms/step, kernels per step, GPU busy, the largest idle gaps,
# the host calls that wait for the device, and the host's top functions (cProfile). Logs go to $OUT/gaps_*.log.
# STEPS: timed steps before the 10 profiled ones (after 20 warm-up steps); SIM=0.6: also sync with SIMULATED outcomes.
set -u
export PYTHONPATH=$PWD/backend${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gaps}; mkdir -p "$OUT"
PY=${SYS_PY:-python3}
DEV=${DEV:-cuda:0}
P="$PY bench/gpu/profile_step.py --gaps --device $DEV --target synthetic:smollm2-135m --prompt-len 128 --steps ${STEPS:-50}"
D="--draft synthetic:smollm2-135m-4l --k 2"
source bench/gpu/gaps_run.sh
for b in ${BS:-1 16}; do
  gaps_run "async_b$b" 90 $D --mode async --b "$b"
  gaps_run "sync_b$b" 60 $D --mode sync --b "$b"
  gaps_run "ar_b$b" 60 --mode ar --b "$b"
  # SIMULATED acceptance: rounds that commit several tokens (the host's commit, rollback and catch-up work)
  [ -n "${SIM:-}" ] && gaps_run "sync_sim${SIM}_b$b" 60 $D --mode sync --b "$b" --simulate-acceptance "$SIM"
done
echo "=== ssd_no_tree_gaps done in $SECONDS s"
