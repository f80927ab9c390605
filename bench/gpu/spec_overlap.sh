#!/usr/bin/env bash
# Overlapped greedy sync rounds (engine/spec_overlap.py) against plain sync rounds (--no-overlap) and AR, each in
# its own process, synthetic shapes (no weights to carry), bf16, CUDA graphs. RUNS picks a subset:
#   smol_4l   SmolLM2 shape + the shipped draft's shape (4 layers, random weights: every draft rejected, tau 1),
#             K=2, b=1 and 16, the bench's prompts: ar / sync overlapped / sync plain
#   smol_self SmolLM2 shape, draft = target (identical weights: every draft accepted), K=2, b=1 and 16
#   smol_2048 the smol_4l pair at 2048-token prompts
#   b1_self   the 1B shape, draft = target, K=4, b=1 (issue 16: the overhead-bound worst case, >= 1.0x AR)
#   ssd       SSD (async, draft in this process) against sync and AR, the smol_4l pair, b=1 and 16, each overlapped
#             and plain: a random draft never hits, so the build rule drafts like sync and those rounds overlap too
#             (draft/inprocess.py moves)
#   sampled   temperature 0.7 (sampled rows overlap too): SmolLM2 shape, draft = target, K=2, b=1 and 16:
#             ar / sync overlapped / sync plain
#   gaps      profile_step.py --gaps, the smol_4l pair at b=1, overlapped and plain (GPU busy per round)
#   real      SmolLM2 real weights + the shipped draft (parked: bench/gpu/smollm2_park.sh; .carry/draft), chat prompts:
#             ar / sync K=2 overlapped / async K=2 (in process) / sync K=2 plain / k_policy auto (K <= 4) / sync K=3
#             overlapped, b=1 and 16
#   real_2048 the same at 2048-token prompts: ar / sync K=2 overlapped / k_policy auto
# Logs and JSON in $OUT; the rows that matter are printed.
set -u
export PYTHONPATH=$PWD/backend${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/spec_overlap}; mkdir -p "$OUT"
PY=${SYS_PY:-python3}; DEV=${DEV:-cuda:0}; DT=${DT:-bfloat16}
RUNS=${RUNS:-smol_4l smol_self gaps smol_2048 b1_self}
B="$PY -m specdec.cli --log-level INFO bench --device $DEV --dtype $DT --numseqs 16"
SMOL="--target synthetic:smollm2-135m"
one() {   # name timeout args...: one bench process
  local n=$1 t=$2; shift 2
  echo "--- $n"
  timeout "$t" $B "$@" --json "$OUT/$n.json" > "$OUT/$n.log" 2>&1; echo "exit $?"
  grep -E "^(mode|ar|sync|async) |captures inside" "$OUT/$n.log" | head -8
}
on() { [[ " $RUNS " == *" $1 "* ]]; }
three() { # name args...: AR, sync overlapped and sync plain rounds, each in its own process
  local n=$1; shift
  one "${n}_ar" 150 "$@" --modes ar
  one "${n}_sync_overlap" 150 "$@" --modes sync
  one "${n}_sync_plain" 150 "$@" --modes sync --no-overlap
}
on smol_4l && three smol_4l $SMOL --draft synthetic:smollm2-135m-4l --k 2 --sweep b=1,16 --output_len 128
if on smol_self; then
  C="$SMOL --draft synthetic:smollm2-135m --k 2 --sweep b=1,16 --output_len 128"
  one smol_self_sync_overlap 150 $C --modes sync
  one smol_self_sync_plain 150 $C --modes sync --no-overlap
fi
if on ssd; then   # the smol_4l trio's sync rows and AR, then async overlapped and plain (the most in one short call)
  C="$SMOL --draft synthetic:smollm2-135m-4l --k 2 --sweep b=1,16 --output_len 128"
  one ssd_async 120 $C --modes async --draft-placement in_process
  one ssd_sync 120 $C --modes sync
  one ssd_ar 120 $C --modes ar
  one ssd_async_plain 120 $C --modes async --draft-placement in_process --no-overlap
  one ssd_sync_plain 120 $C --modes sync --no-overlap
fi
on sampled && three sampled $SMOL --draft synthetic:smollm2-135m --k 2 --sweep b=1,16 --output_len 128 --temp 0.7
if on gaps; then
  P="$PY bench/gpu/profile_step.py --gaps --device $DEV $SMOL --prompt-len 128 --steps 60"
  source bench/gpu/gaps_run.sh
  gaps_run sync_overlap_b1 90 --draft synthetic:smollm2-135m-4l --k 2 --mode sync --b 1
  gaps_run sync_plain_b1 90 --draft synthetic:smollm2-135m-4l --k 2 --mode sync --b 1 --no-overlap
fi
on smol_2048 && three smol_2048 $SMOL --draft synthetic:smollm2-135m-4l --k 2 --sweep b=1,16 --output_len 64 --prompt-len 2048
on b1_self && three b1_self --target synthetic:llama-1b --draft synthetic:llama-1b --k 4 --b 1 --output_len 128
if on real || on real_2048; then
  P=${P:-/tmp/persist} SITE=${SITE:-/tmp/site}
  source bench/gpu/smollm2_park.sh
  [ -f .carry/draft/model.safetensors ] && mkdir -p drafts/smollm2-135m-draft && cp .carry/draft/* drafts/smollm2-135m-draft/
  md5sum drafts/smollm2-135m-draft/model.safetensors
  export PYTHONPATH=$PYTHONPATH:$SITE SPECDEC_CACHE=$P/cache
fi
if on real && [ "${SMOL_READY:-0}" = 1 ]; then
  C="--target smollm2-135m --chat --output_len 128 --sweep b=1,16"
  one real_ar 150 $C --modes ar
  one real_sync_k2_overlap 150 $C --modes sync --k 2
  one real_async_k2 150 $C --modes async --k 2 --draft-placement in_process
  one real_sync_k2_plain 150 $C --modes sync --k 2 --no-overlap
  one real_auto 200 $C --modes sync --k 4 --k-policy auto
  one real_sync_k3_overlap 150 $C --modes sync --k 3
fi
if on real_2048 && [ "${SMOL_READY:-0}" = 1 ]; then
  C="--target smollm2-135m --prompt-len 2048 --output_len 64 --sweep b=1,16"
  one real_2048_ar 150 $C --modes ar
  one real_2048_sync_k2_overlap 150 $C --modes sync --k 2
  one real_2048_auto 200 $C --modes sync --k 4 --k-policy auto
fi
echo "=== spec_overlap done in $SECONDS s"
