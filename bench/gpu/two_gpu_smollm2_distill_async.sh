#!/usr/bin/env bash
# Run C (carries .carry/b): SmolLM2-135M on two H200s. Distil the draft on GPU 0 (unless one is
# shipped in drafts/), then AR / sync / async (draft on GPU 1) at batch 1 and the acceptance table.
set -u
export PYTHONPATH=$PWD/backend:/tmp/site PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
cd /tmp/persist && cat gguf.part.aa $OLDPWD/.carry/b/gguf.part.ab > SmolLM2-135M-Instruct.Q4_1.gguf && \
  echo "$(cat $OLDPWD/.carry/b/gguf.sha256)  SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 1
cd - >/dev/null
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/persist/gguf-*.whl || exit 1
T=/tmp/persist/SmolLM2-135M-Instruct.Q4_1.gguf
D=${DRAFT:-/tmp/persist/draft}
if [ ! -e "$D/config.json" ]; then
  echo "== distill"
  timeout 300 python3 -m specdec.cli distill --target $T --out $D --device cuda:0 ${DISTILL_ARGS:---layers 4 --steps 800 --batch 32 --seq-len 384} 2>&1 | grep -v "it/s\]" | tail -6
  tar -C $(dirname $D) -cf $OUT/draft.tar $(basename $D) --exclude train && (cd $OUT && split -b 15M draft.tar draft.tar.part- && rm draft.tar)
fi
B="python3 -m specdec.cli --log-level WARNING bench --target $T --chat --numseqs 8 --output_len 128 --b 1"
echo "== AR / sync / async, batch 1 (drafts on GPU 1 in async)"
$B --baseline hf --json $OUT/ar.json 2>&1 | tail -3
for k in 4 6; do
  $B --spec --draft $D --k $k 2>&1 | tail -1
  $B --spec --async --gpus 2 --draft $D --k $k --f 3 2>&1 | tail -1
done
$B --spec --draft ngram --k 4 2>&1 | tail -1
echo "== acceptance (held-out prompts)"
timeout 300 python3 -m specdec.cli acceptance --target $T --draft $D,self:8,ngram --k 4 --temp 0,0.7 --device cuda:0 \
  --json $OUT/acceptance.json 2>&1 | tail -12
