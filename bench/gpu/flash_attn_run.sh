#!/usr/bin/env bash
# flash-attn-4 on the GPU machine: park/install the carried wheels (bench/gpu/flash_attn_install.sh), then, once it
# imports, the parts named in PARTS (default "check table"; logs and JSON to $OUT):
#   check  bench/gpu/attention_backends_engine.py: every backend through the engine (AR, sync, SSD), tiny models of
#          head dim 64/128, bf16/fp16: speculative == AR per backend, AR agreement between backends (~1-2 min);
#   table  bench/gpu/attention_table.py: us per call in a CUDA graph for sdpa/triton/flash_attn, 8B and 1B shapes,
#          batch 1/8/16/64, context 512/2048/8192, 1/5 queries, the floor, auto's pick, a suggested TABLE (~3-5 min);
#   e2e    8B-shaped target + 1B-shaped draft (random weights), AR and SIMULATED sync (acceptance 0.7, K=4), b=1,16,
#          prompts of $LENS tokens, for each backend in $BACKENDS (~2 min per backend and length).
# Calls: carry [".carry/fa4a"] first (parks), then [".carry/fa4b"] with PARTS set; later calls while the machine
# stays warm need no carry.
set -u
OUT=${OUT:-/tmp/flash_attn_run}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
source bench/gpu/flash_attn_install.sh
[ "$FA4_READY" = 1 ] || exit 0
PARTS=${PARTS:-check table}
if [[ " $PARTS " == *" check "* ]]; then
  echo "=== check"; timeout 240 python3 bench/gpu/attention_backends_engine.py 2>&1 | tee "$OUT/engine_check.log" | grep -v "^ \|^Traceback\|Writing"
fi
if [[ " $PARTS " == *" table "* ]]; then
  echo "=== table"; timeout 420 python3 bench/gpu/attention_table.py 2>&1 | tee "$OUT/attention_table.log" | grep -v "^ \|Traceback"
fi
if [[ " $PARTS " == *" e2e "* ]]; then
  for L in ${LENS:-2048}; do
    for A in ${BACKENDS:-triton flash_attn}; do
      echo "=== e2e prompt $L, attention $A"
      timeout 200 python3 -m specdec.cli --log-level WARNING bench --target synthetic:llama-8b --draft synthetic:llama-1b \
        --modes ar,sync --k 4 --prompt-len "$L" --numseqs 16 --output_len 32 --sweep b=1,16 --simulate-acceptance 0.7 \
        --attention-backend "$A" --device cuda:0 --dtype bfloat16 --json "$OUT/e2e_${A}_$L.json" 2>&1 \
        | tee "$OUT/e2e_${A}_$L.log" | grep -E "^(mode|ar|sync) |captur|Error|error" | head -20
    done
  done
fi
echo "=== flash_attn_run done in $SECONDS s"
