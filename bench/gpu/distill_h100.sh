#!/usr/bin/env bash
# The shipped SmolLM2-135M draft, trained on one H100 in three back-to-back calls (the machine stays
# warm 30 s between them; /tmp/persist survives while it does):
#   STAGE=park    (carry .carry/a)  park the first half of the SmolLM2 GGUF and the gguf wheel
#   STAGE=train   (carry .carry/b)  join the GGUF; corpus (built-in + target-written prompts, greedy and
#                                   sampled completions) and a 4-layer draft; the draft comes back in $OUT
#   STAGE=measure                   a 2-layer draft on the same corpus; acceptance on held-out prompts
#                                   (T = 0 / 0.7, K = 4) against self:8 and ngram; AR (+ HF) vs sync tok/s
set -u
export PYTHONPATH=$PWD/backend:/tmp/site PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
P=/tmp/persist; T=$P/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p $P
S="python3 -m specdec.cli --log-level WARNING"
pack() {  # pack DIR NAME: the draft folder (without its training state) into $OUT, in <= 15 MB parts
  tar -C "$(dirname $1)" --exclude=train -cf $OUT/$2.tar "$(basename $1)" && (cd $OUT && split -b 15M $2.tar $2.tar.part- && rm $2.tar)
}
case "${STAGE:-}" in
park)
  cp .carry/a/* $P/ && ls -la $P && nvidia-smi --query-gpu=name,memory.used --format=csv,noheader ;;
train)
  cat $P/gguf.part.aa .carry/b/gguf.part.ab > $T && echo "$(cat .carry/b/gguf.sha256)  $T" | sha256sum -c || exit 1
  python3 -m pip install -q --no-index --no-deps --target /tmp/site $P/gguf-*.whl || exit 1
  timeout 560 $S distill --target $T --out $P/d4 --device cuda:0 --layers 4 --invent ${INVENT:-3000} --samples 3 \
    --seq-len 384 --batch 32 --gen-batch 256 --steps ${STEPS:-2400} --time-limit ${TRAIN_S:-240} --save-every 800 \
    --head-vocab 8192 2>&1 | grep -v "it/s\]\|tok/s\]\|step/s\]" | tail -12
  ls -la $P/d4 $P/d4/train; pack $P/d4 d4 ;;
measure)
  mkdir -p $P/d2/train && cp $P/d4/train/corpus.pt $P/d2/train/
  timeout 200 $S distill --target $T --out $P/d2 --device cuda:0 --layers 2 --invent ${INVENT:-3000} --samples 3 \
    --seq-len 384 --batch 32 --steps ${STEPS2:-2400} --time-limit ${TRAIN2_S:-150} --save-every 800 \
    --head-vocab 8192 2>&1 | grep -v "it/s\]\|tok/s\]\|step/s\]" | tail -6
  pack $P/d2 d2
  echo "== acceptance (held-out prompts, K = 4, batch 1)"
  timeout 240 $S acceptance --target $T --draft $P/d4,$P/d2,self:8,ngram --k 4 --temp 0,0.7 --device cuda:0 \
    --dtype bfloat16 --json $OUT/acceptance.json 2>&1 | tail -12
  echo "== AR (+ HF) vs sync, batch 1, 8 chat prompts x 128 tokens"
  B="$S bench --target $T --chat --numseqs 8 --output_len 128 --b 1"
  $B --baseline hf --json $OUT/ar.json 2>&1 | tail -3
  for d in d4 d2; do $B --spec --draft $P/$d --k 4 --sweep k=2,3,4,6 --json $OUT/sync_$d.json 2>&1 | tail -4; done ;;
*) echo "STAGE=park|train|measure"; exit 2 ;;
esac
