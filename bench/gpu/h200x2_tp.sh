#!/usr/bin/env bash
# Two H200s, run B: tensor parallelism after the close fix (NCCL abort instead of graceful shutdown).
# TP check (NCCL + graphs, identical to TP 1), then synthetic Llama-3.1-8B AR b=1,16 at TP 1 and TP 2.
set -u
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/h200x2_tp}; mkdir -p $OUT
echo "== [$SECONDS s] TP check"
timeout 150 python3 bench/gpu/tp_check.py cuda:0 2>&1 | tee $OUT/tp_check.log | grep -v "Loading\|Writing" | tail -10
B="python3 -m specdec.cli --log-level WARNING bench --target synthetic:llama-8b --output_len 64 --numseqs 16 --b 16 --sweep b=1,16"
for tp in 1 2; do
  echo "== [$SECONDS s] TP $tp"
  timeout 120 $B --tp $tp --json $OUT/ar_tp$tp.json 2>&1 | tee $OUT/tp$tp.log | grep -v "Loading\|Writing" | tail -4
done
echo "== [$SECONDS s] done"
