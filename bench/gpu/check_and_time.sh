#!/usr/bin/env bash
# One call that fits a 10-minute limit: GPU correctness (graphs == eager == CPU per case, bench/gpu/check_graphs.py),
# the SSD round table (bench/gpu/ssd_round.sh, time-budgeted), the attention kernel table (--quick), and the
# 8B-shape AR step at 2048-token prompts (b=1, 16). Everything under $OUT is packed into $OUT/logs-PARTS.tgz
# (a call brings back at most 8 files). Budgets: CHECK_S, SSD_BUDGET_S, ATTN_S, AR_S.
# PARTS="check ssd attn ar" (the default: all) picks parts, so the work can ride along other calls, e.g. the
# calls that park the SmolLM2 weights for bench/gpu/distill_smollm2.sh.
set -u
export PYTHONPATH=$PWD/backend${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/w"
PARTS=${PARTS:-check ssd attn ar}
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/w/gpu.txt"
if has check; then
  echo "=== check_graphs"; timeout ${CHECK_S:-100} python3 bench/gpu/check_graphs.py > "$OUT/w/check.log" 2>&1
  echo "exit $?"; tail -14 "$OUT/w/check.log"
fi
if has ssd; then
  echo "=== ssd_round"; OUT=$OUT/w/ssd BUDGET_S=${SSD_BUDGET_S:-200} LIMIT_S=$(( ${SSD_BUDGET_S:-200} + 70 )) \
    bash bench/gpu/ssd_round.sh > "$OUT/w/ssd.log" 2>&1; grep -A24 "== summary" "$OUT/w/ssd.log" | tail -26
  tail -4 "$OUT/w/ssd.log"
fi
if has attn; then
  echo "=== attention_table --quick"; timeout ${ATTN_S:-110} python3 bench/gpu/attention_table.py --quick \
    --out "$OUT/w/attn.json" > "$OUT/w/attn.log" 2>&1; echo "exit $?"; tail -30 "$OUT/w/attn.log"
fi
if has ar; then
  echo "=== 8B AR, 2048-token prompts"; timeout ${AR_S:-90} python3 -m specdec.cli bench --target synthetic:llama-8b \
    --prompt-len 2048 --numseqs 16 --output_len 64 --sweep b=1,16 --json "$OUT/w/ar8b_2048.json" > "$OUT/w/ar8b.log" 2>&1
  echo "exit $?"; tail -8 "$OUT/w/ar8b.log"
fi
tar czf "$OUT/logs-${PARTS// /-}.tgz" -C "$OUT" w && rm -rf "$OUT/w"
echo "=== done in $SECONDS s"
