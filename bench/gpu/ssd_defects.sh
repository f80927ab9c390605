#!/usr/bin/env bash
# The open SSD/sync defects of the 2026-12-07 H200 run (bench/gpu/NOTES.md, "Open defects found"), in one call
# (~5 min): each case prints its table; full logs under $OUT, packed into $OUT/defects.tgz.
#   1. async with the build rule at b=8, draft = target (1B): rule vs tree always, graph captures counted from
#      the INFO log (a capture inside the timed run is a one-time cost the rule must not learn from);
#   2. the same, profiled: GPU busy fraction and the top kernels per round (rule, then tree always);
# POLICIES="auto" PROFILES=0: part 1 with the rule only, no profiles (parts 2 and 3's profile).
#   3. sync 8B+1B, 2048-token prompts, b=1/16, SIMULATED A=0.7: draft ms per round (27.4 at b16 before the
#      pinned uploads), and its profile at b16.
set -u
export PYTHONPATH=$PWD/backend${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/defects}; mkdir -p "$OUT/w"
S="python3 -m specdec.cli"
P="python3 bench/gpu/profile_step.py"
B1="--target synthetic:llama-1b --draft synthetic:llama-1b --k 4 --f 3 --output_len 96 --max-model-len 2048 --prompts gsm8k --numseqs 8"
for policy in ${POLICIES:-auto always}; do
  echo "=== 1. async b=8, draft = target, tree_policy=$policy"
  timeout 100 $S --log-level INFO bench $B1 --modes sync,async --b 8 --tree-policy $policy > "$OUT/w/b8_$policy.log" 2>&1
  grep -E "^(sync|async) " "$OUT/w/b8_$policy.log"
  echo "graph captures logged: $(grep -c 'captured CUDA graph' "$OUT/w/b8_$policy.log")"
  grep "captures inside" "$OUT/w/b8_$policy.log"
done
for policy in $([ "${PROFILES:-1}" = 1 ] && echo auto always); do
  echo "=== 2. profile async b=8 tree_policy=$policy"
  timeout 80 $P --target synthetic:llama-1b --draft synthetic:llama-1b --mode async --k 4 --b 8 --prompt-len 128 \
    --tree-policy $policy > "$OUT/w/prof_b8_$policy.log" 2>&1; grep -A8 "^PROFILE" "$OUT/w/prof_b8_$policy.log" | cut -c1-180
done
echo "=== 3. sync 8B+1B 2048 SIMULATED A=0.7"
timeout 100 $S bench --target synthetic:llama-8b --draft synthetic:llama-1b --modes ar,sync --k 4 --prompt-len 2048 \
  --numseqs 16 --output_len 32 --sweep b=1,16 --simulate-acceptance 0.7 > "$OUT/w/sim2048.log" 2>&1
grep -E "^(ar|sync) |captures inside" "$OUT/w/sim2048.log"
[ "${PROFILES:-1}" = 1 ] && timeout 80 $P --target synthetic:llama-8b --draft synthetic:llama-1b --mode sync --k 4 --b 16 --prompt-len 2048 \
  --steps 10 --simulate-acceptance 0.7 > "$OUT/w/prof_sim2048.log" 2>&1; grep -A10 "^PROFILE" "$OUT/w/prof_sim2048.log" | cut -c1-180
tar czf "$OUT/defects.tgz" -C "$OUT" w && rm -rf "$OUT/w"
echo "=== done in $SECONDS s"
