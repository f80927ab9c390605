#!/usr/bin/env bash
# Two H200s, run A (carries .carry/w: the nvidia-pytriton and python-rapidjson wheels).
# 1. tensor parallelism: correctness gate (NCCL + graphs), then TP 1 vs TP 2 (synthetic Llama-8B);
# 2. 8B-shape AR on one H200 (fraction of floor); async SSD timing with target GPU 0, draft GPU 1;
# 3. Triton: target on GPU 0 and the draft as its own model on GPU 1, served vs in-process.
set -u
export PYTHONPATH=$PWD/backend:/tmp/site PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/persist
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/w/*.whl || exit 1
B="python3 -m specdec.cli --log-level WARNING bench --target synthetic:llama-8b --output_len 64"
echo "== TP check"; timeout 240 python3 bench/gpu/tp_check.py 2>&1 | grep -v "Loading\|Writing" | tail -12
echo "== TP timings"
for tp in 1 2; do
  $B --tp $tp --b 16 --sweep b=1,16 --numseqs 16 2>&1 | tail -2
  $B --tp $tp --spec --draft synthetic:llama-1b --k 4 --b 1 --numseqs 2 2>&1 | tail -1
done
echo "== Triton serving (target GPU 0, draft model GPU 1)"
timeout 420 python3 bench/gpu/serve_http.py --target synthetic:llama-8b --draft synthetic:llama-1b --mode sync --k 4 \
  --target-gpu 0 --draft-gpu 1 --max-tokens 64 --requests 8 2>&1 | tail -14
