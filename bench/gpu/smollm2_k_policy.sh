#!/usr/bin/env bash
# SmolLM2-135M (real weights) with the shipped draft: AR, sync at fixed K=2 and 3, sync under k_policy=auto (with
# --log-level INFO: the shapes captured), SSD at K=2, each in its own process, at b=1 and b=16, chat prompts and
# 2048-token prompts; and AR then sync in one process (the layout that measured sync slower). RUNS picks a subset
# (names below; all of them take ~15-20 minutes with the warm-up grid: three calls). Needs the weights parked (bench/gpu/smollm2_park.sh) and
# the shipped draft carried as .carry/draft (copied into drafts/ here). Logs and JSON: $OUT.
set -u
OUT=${OUT:-/tmp/smollm2_k_policy}; mkdir -p "$OUT"
P=${P:-/tmp/persist} SITE=${SITE:-/tmp/site} PY=${PY:-python3}
source bench/gpu/smollm2_park.sh
[ "$SMOL_READY" = 1 ] || exit 0
# always over what is there: an ignored drafts/ folder survives between calls on a warm machine
[ -f .carry/draft/model.safetensors ] && mkdir -p drafts/smollm2-135m-draft && cp .carry/draft/* drafts/smollm2-135m-draft/
md5sum drafts/smollm2-135m-draft/model.safetensors
export PYTHONPATH=$PWD/backend:$SITE PYTHONUNBUFFERED=1 SPECDEC_CACHE=$P/cache TOKENIZERS_PARALLELISM=false
B="$PY -m specdec.cli --log-level INFO bench --target smollm2-135m --device cuda:0 --dtype bfloat16 --sweep b=1,16"
RUNS=${RUNS:-ar_chat sync_chat_k2 sync_chat_k3 ar_then_sync_k2 auto_chat async_chat_k2 ar_2048 sync_2048_k2}
run() {   # name timeout args...
  local n=$1 t=$2; shift 2
  [[ " $RUNS " == *" $n "* ]] || return 0
  echo "=== $n"
  timeout "$t" $B "$@" --json "$OUT/$n.json" > "$OUT/$n.log" 2>&1; echo "exit $?"
  grep -E "^(mode|ar|sync|async) |captures inside" "$OUT/$n.log" | head -12
}
C="--chat --numseqs 16 --output_len 128"
# each mode in its own process: a sync run in a process that had run AR first measured 1.2-1.3x slower verify and
# draft phases than a sync-only process (eighth session); ar_then_sync repeats that layout to check it
run ar_chat 120 $C --modes ar
run sync_chat_k2 160 $C --modes sync --k 2
run sync_chat_k3 160 $C --modes sync --k 3
run ar_then_sync_k2 220 $C --modes ar,sync --k 2
run auto_chat 200 $C --modes sync --k 4 --k-policy auto
run async_chat_k2 160 $C --modes async --k 2
run ar_2048 120 --prompt-len 2048 --numseqs 16 --output_len 64 --modes ar
run sync_2048_k2 160 --prompt-len 2048 --numseqs 16 --output_len 64 --modes sync --k 2
echo "=== smollm2_k_policy done in $SECONDS s"
