#!/usr/bin/env bash
# The seed's configuration: a 70B-shaped target split over 4 GPUs (TP 4) and a 1B-shaped draft on a
# fifth GPU (random weights; acceptance SIMULATED at A=0.7, H=0.8 where marked). AR / sync / async at
# b=1 and b=16, and the fan-out sweep F in {1,2,3,4} at K in {4,6}, printed in the seed's table form
# (tok/s, accepted length, cache hit rate). Needs 5+ GPUs: kind nvidia-h200-x8 or nvidia-h100-x8.
#   bash bench/gpu/seed_4plus1.sh
set -uo pipefail
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SIM="--simulate-acceptance ${A:-0.7} --simulate-hit ${H:-0.8}"
B="python3 -m specdec.cli bench --target synthetic:llama-70b --draft synthetic:llama-1b --gpus 5 --output_len 128 --numseqs 16"
run() { local name=$1; shift; echo "=== $name"; timeout 300 "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1; tail -3 "$OUT/$name.log"; }
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
for b in 1 16; do
  run ar_b$b $B --tp 4 --b $b
  run sync_b$b $B --tp 4 --b $b --spec --k 6 $SIM
  run async_b$b $B --b $b --spec --async --k 7 --f 3 $SIM
done
for K in 4 6; do
  for F in 1 2 3 4; do
    run fan_k${K}_f$F $B --b 1 --spec --async --k $K --f $F $SIM
  done
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\nSIMULATED acceptance (A, H as set)\n{'run':14} {'tok/s':>8} {'accepted length':>15} {'cache hit rate':>14}")
for f in sorted(out.glob("*.json")):
    for r in json.loads(f.read_text())["runs"]:
        print(f"{f.stem:14} {r['decode_tok_s']:>8.1f} {r['tokens_per_round']:>15.2f} {r['cache_hit_rate']:>14.2f}")
PY
