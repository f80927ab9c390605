#!/usr/bin/env bash
# One GPU call: correctness on the GPU (graphs == eager == CPU, per attention backend), the attention
# kernel table, and the engine's step times for the 8B/1B shapes at 64- and 2048-token prompts
# (AR b=1/b=16, sync 8B+1B K=4). Logs and JSON under $OUT; a short table at the end.
#   PARTS="check attn bench" bash bench/gpu/engine_step.sh   (on the GPU machine, from the repository root)
set -uo pipefail
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B="python3 -m specdec.cli bench"
step() {  # step NAME TIMEOUT CMD...: run, tee the log, keep going on failure
  local name=$1 t=$2; shift 2
  echo "=== $name" | tee -a "$OUT/summary.txt"
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-12}" "$OUT/$name.log" | tee -a "$OUT/summary.txt"
  [ $rc -ne 0 ] && echo "!!! $name exit $rc" | tee -a "$OUT/summary.txt"
}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/summary.txt"
PARTS=${PARTS:-check attn bench}
[[ $PARTS == *check* ]] && TAIL=14 step check_graphs 150 python3 bench/gpu/check_graphs.py
[[ $PARTS == *attn* ]] && TAIL=60 step attention_table 300 python3 bench/gpu/attention_table.py ${ATTN_ARGS:-}
[[ $PARTS == *bench* ]] && for L in 64 2048; do
  step ar8b_ctx$L 150 $B --target synthetic:llama-8b --prompt-len $L --numseqs 16 --output_len 64 --sweep b=1,16 \
       --json "$OUT/ar8b_ctx$L.json"
  step sync8b_ctx$L 150 $B --target synthetic:llama-8b --draft synthetic:llama-1b --spec --k 4 --prompt-len $L \
       --numseqs 16 --output_len 64 --sweep b=1,16 --json "$OUT/sync8b_ctx$L.json"
done
if [[ $PARTS == *profile* ]]; then
  P="python3 bench/gpu/profile_step.py"
  for T in synthetic:smollm2-135m synthetic:llama-8b; do
    for F in "" "--no-overlap" "--no-overlap --no-fused-rope"; do
      TAIL=1 step "profile_${T#synthetic:}${F// /}" 120 $P --target $T --b 1 $F
    done
  done
fi
[[ $PARTS == *bench* ]] && step ar1b_ctx64 90 $B --target synthetic:llama-1b --prompt-len 64 --numseqs 4 --output_len 128 --b 1 --json "$OUT/ar1b.json"
echo "=== done" | tee -a "$OUT/summary.txt"
