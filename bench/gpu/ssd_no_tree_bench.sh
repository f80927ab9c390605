#!/usr/bin/env bash
# SSD when the build rule drafts like sync (no trees), against sync and AR in the same run (~2 min): the
# SmolLM2 shape with the shipped draft's shape (synthetic:smollm2-135m-4l; random weights, so every round
# misses and the rule turns to no-tree rounds), K = 2, b = 1 and 16, the bench's prompts and 2048-token
# prompts. Then the async and sync rounds' gap profiles at b = 1 (bench/gpu/profile_step.py --gaps). Logs: $OUT.
set -u
export PYTHONPATH=$PWD/backend${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/ssd_no_tree}; mkdir -p "$OUT"
PY=${SYS_PY:-python3}; DEV=${DEV:-cuda:0}; DT=${DT:-bfloat16}
B="$PY -m specdec.cli --log-level WARNING bench --target synthetic:smollm2-135m --draft synthetic:smollm2-135m-4l
   --modes ar,sync,async --k 2 --sweep b=1,16 --numseqs 16 --device $DEV --dtype $DT"
echo "=== short prompts"
timeout 200 $B --output_len 128 2>&1 | tee "$OUT/bench_short.log" | grep -E "^(mode|ar|sync|async) "
echo "=== 2048-token prompts"
timeout 200 $B --output_len 64 --prompt-len 2048 2>&1 | tee "$OUT/bench_2048.log" | grep -E "^(mode|ar|sync|async) "
P="$PY bench/gpu/profile_step.py --gaps --device $DEV --target synthetic:smollm2-135m --prompt-len 128"
source bench/gpu/gaps_run.sh
gaps_run async_b1 90 --draft synthetic:smollm2-135m-4l --k 2 --mode async --b 1
gaps_run sync_b1 60 --draft synthetic:smollm2-135m-4l --k 2 --mode sync --b 1
echo "=== ssd_no_tree_bench done in $SECONDS s"
