#!/usr/bin/env bash
# What bounds a distillation run on one GPU, in one call (~4 min), SmolLM2-135M shapes with random weights:
#   1. the training step per student variant (`distill_step.py`: 4-layer draft with the KL over the whole
#      vocabulary vs the exported head's 8193 rows, EAGLE head; batch 32 and 64) and its top CUDA kernels;
#   2. corpus generation speed: the engine's AR decoding at batch 256 / 512 / 1024 (bench, random-token
#      prompts of 64 tokens, 256 new tokens; the corpus run decodes the same way);
#   3. issue 16's baseline (HF_TARGETS): SmolLM2-shape AR b=1 against HF transformers `generate` on the same GPU, prompts
#      and token counts (`specdec bench --baseline hf`), then the 1B shape the same way.
# If a SmolLM2 weight part is carried (.carry/smolN), it is parked first (bench/gpu/smollm2_park.sh), so this
# call can be one of the back-to-back calls that bring the weights for bench/gpu/distill_smollm2.sh.
# Full logs under $OUT/speeds.log.
set -u
export PYTHONPATH=$PWD/backend${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/speeds}; mkdir -p "$OUT"
PY=python3; P=/tmp/persist; SITE=/tmp/site
source bench/gpu/smollm2_park.sh
S="python3 -m specdec.cli"
LOG=$OUT/speeds.log
run() { local t=$1; shift; echo "=== $*" | tee -a "$LOG"; timeout "$t" "$@" >> "$LOG" 2>&1; echo "(exit $?)" >> "$LOG"; }
G="--device cuda:0 --dtype bfloat16"
for part in ${PARTS:-train gen hf}; do
  case $part in
  train)
    run 150 python3 bench/gpu/distill_step.py --batch 32,64 --steps 15
    sed -n '/^| variant/,$p' "$LOG" | tail -n 8 ;;
  gen)
    for b in ${GEN_BS:-256 512 1024}; do
      run 90 $S bench --target synthetic:smollm2-135m $G --b "$b" --numseqs "$b" --prompt-len 64 --output_len 256
      grep -E "^ar " "$LOG" | tail -n 1
    done ;;
  hf)
    for t in ${HF_TARGETS:-smollm2-135m llama-1b}; do
      run 120 $S bench --target "synthetic:$t" $G --b 1 --numseqs 4 --prompt-len 128 --output_len 128 --baseline hf
      grep -E "^(ar|hf_generate) " "$LOG" | tail -n 2
    done ;;
  esac
done
echo "=== done in $SECONDS s"
