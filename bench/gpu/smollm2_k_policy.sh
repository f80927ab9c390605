#!/usr/bin/env bash
# SmolLM2-135M (real weights) with the shipped draft: AR vs sync under k_policy=auto (with --log-level INFO: the
# K' each round chose, the shapes captured) and under fixed K=2 and 3, plus SSD at K=2, at b=1 and b=16, chat
# prompts and 2048-token prompts. Needs the weights parked (bench/gpu/smollm2_park.sh) and the shipped draft
# carried as .carry/draft (copied into drafts/ here). Logs and JSON: $OUT.
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
run() {   # name timeout args...
  local n=$1 t=$2; shift 2
  echo "=== $n"
  timeout "$t" $B "$@" --json "$OUT/$n.json" > "$OUT/$n.log" 2>&1; echo "exit $?"
  grep -E "^(mode|ar|sync|async) |captur" "$OUT/$n.log" | head -12
}
run auto_chat 150 --chat --numseqs 16 --output_len 128 --modes ar,sync --k 4 --k-policy auto
run fixed_chat_k2 150 --chat --numseqs 16 --output_len 128 --modes ar,sync,async --k 2
run fixed_chat_k3 120 --chat --numseqs 16 --output_len 128 --modes sync --k 3
run fixed_2048 150 --prompt-len 2048 --numseqs 16 --output_len 64 --modes ar,sync --k 2
grep -h "K'\|k_policy\|chose" "$OUT/auto_chat.log" | sort | uniq -c | sort -rn | head -12
echo "=== smollm2_k_policy done in $SECONDS s"
