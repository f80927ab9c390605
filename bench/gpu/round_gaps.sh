#!/usr/bin/env bash
# Where the GPU waits inside a speculative round (bench/gpu/NOTES.md, open defects 1-2), in one call (~3 min):
# bench/gpu/profile_step.py --gaps for each case: ms/step, GPU busy, the largest idle gaps between kernels (with
# the kernels on each side), the host calls that wait for the device per step, graph captures during the
# profiled steps, and the host's top functions (cProfile).
#   1. sync 8B+1B, b16, 2048-token prompts, SIMULATED A=0.7 (draft phase 30 ms where ~6 is expected);
#   2. the same without SIMULATED outcomes (real verification of random weights: every draft rejected);
#   3. async, draft = target (1B), b8, 128-token prompts, the build rule (no-tree rounds: draft phase 13.3 ms vs
#      sync 7.2), then the same pair in sync mode.
set -u
export PYTHONPATH=$PWD/backend${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gaps}; mkdir -p "$OUT"
PY=${SYS_PY:-python3}
P="$PY bench/gpu/profile_step.py --gaps"
source bench/gpu/gaps_run.sh
gaps_run sim_sync_b16_2048 150 --target synthetic:llama-8b --draft synthetic:llama-1b --mode sync --k 4 --b 16 \
  --prompt-len 2048 --steps 10 --simulate-acceptance 0.7
gaps_run real_sync_b16_2048 120 --target synthetic:llama-8b --draft synthetic:llama-1b --mode sync --k 4 --b 16 \
  --prompt-len 2048 --steps 10
gaps_run async_rule_b8 100 --target synthetic:llama-1b --draft synthetic:llama-1b --mode async --k 4 --b 8 --prompt-len 128
gaps_run sync_b8 80 --target synthetic:llama-1b --draft synthetic:llama-1b --mode sync --k 4 --b 8 --prompt-len 128
echo "=== round_gaps done in $SECONDS s"
