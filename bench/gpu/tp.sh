#!/usr/bin/env bash
# Tensor parallelism on a 2-GPU machine: correctness (NCCL + CUDA graphs), then synthetic Llama-8B
# AR and sync (draft synthetic:llama-1b on GPU 0, TP = 1) with TP = 1 and TP = 2, batch 1 and 16.
# Run from the repository root: bash bench/gpu/tp.sh   (no installs; PYTHONPATH=$PWD/backend)
set -u
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 SPECDEC_CACHE=${SPECDEC_CACHE:-/tmp/persist/cache} TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/specdec-tp}
mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
python3 bench/gpu/tp_check.py 2>&1 | grep -v "Loading\|Writing"
B="python3 -m specdec.cli --log-level WARNING bench --target synthetic:llama-8b --b 16 --sweep b=1,16 --numseqs 16 --output_len 64"
for tp in 1 2; do
  $B --tp $tp --json "$OUT/ar_tp$tp.json" 2>&1 | tail -5
  $B --tp $tp --spec --draft synthetic:llama-1b --k 4 --json "$OUT/sync_tp$tp.json" 2>&1 | tail -5
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for mode in ("ar", "sync"):
    for tp in (1, 2):
        f = out / f"{mode}_tp{tp}.json"
        if f.exists():
            for r in json.loads(f.read_text())["runs"]:
                rows[mode, tp, r["b"]] = r
print(f"\n{'mode':5} {'b':>3} | {'TP1 tok/s':>9} {'TP2 tok/s':>9} {'TP2/TP1':>7} | {'TP1 verify ms':>13} {'TP2 verify ms':>13} | {'draft ms':>8}")
for mode in ("ar", "sync"):
    for b in (1, 16):
        one, two = rows.get((mode, 1, b)), rows.get((mode, 2, b))
        if not one or not two:
            print(f"{mode:5} {b:>3} | missing run")
            continue
        print(f"{mode:5} {b:>3} | {one['decode_tok_s']:>9.1f} {two['decode_tok_s']:>9.1f} "
              f"{two['decode_tok_s'] / max(one['decode_tok_s'], 1e-9):>7.2f} | {one['avg_verify_ms']:>13.2f} "
              f"{two['avg_verify_ms']:>13.2f} | {two['avg_draft_ms']:>8.2f}")
PY
