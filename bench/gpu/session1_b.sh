#!/usr/bin/env bash
# GPU session 1, part B (H100): SmolLM2-135M bf16 (join the GGUF halves), specdec vs HF transformers.
set -u
export PYTHONPATH=$PWD/backend:/tmp/site PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
cd /tmp/persist && cat gguf.part.aa $OLDPWD/.carry/b/gguf.part.ab > SmolLM2-135M-Instruct.Q4_1.gguf && \
  echo "$(cat $OLDPWD/.carry/b/gguf.sha256)  SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c || exit 1
cd - >/dev/null
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/persist/gguf-*.whl || exit 1
T=/tmp/persist/SmolLM2-135M-Instruct.Q4_1.gguf
B="python3 -m specdec.cli --log-level WARNING bench --target $T --chat --numseqs 8 --output_len 64"
$B --b 1 --baseline hf --json $OUT/smol_ar_b1.json 2>&1 | grep -v "Loading\|Convert" | tee $OUT/smol_ar_b1.txt
$B --b 1 --eager --json $OUT/smol_ar_b1_eager.json 2>&1 | tee $OUT/smol_ar_b1_eager.txt
$B --spec --draft ngram --sweep k=2,4,6 --baseline hf --k 4 --json $OUT/smol_ngram.json 2>&1 | tee $OUT/smol_ngram.txt
$B --spec --draft self:8 --sweep k=2,4,6 --json $OUT/smol_self8.json 2>&1 | tee $OUT/smol_self8.txt
$B --spec --draft self:8 --k 4 --eager --json $OUT/smol_self8_eager.json 2>&1 | tee $OUT/smol_self8_eager.txt
$B --b 16 --numseqs 16 --json $OUT/smol_ar_b16.json 2>&1 | tee $OUT/smol_ar_b16.txt
$B --spec --draft ngram --k 4 --b 16 --numseqs 16 --json $OUT/smol_ngram_b16.json 2>&1 | tee $OUT/smol_ngram_b16.txt
