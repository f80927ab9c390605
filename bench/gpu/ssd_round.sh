#!/usr/bin/env bash
# SSD on one GPU (one H200): async vs sync vs AR, per-phase ms, hit rate; SIMULATED table at A = 0.5/0.7/0.9.
# One process (bench/gpu/ssd_round.py); full log and JSON in $OUT. DRY=1: CPU, tiny shapes (checks the script).
set -u
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/ssd_round}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ "${DRY:-0}" = "1" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
timeout ${LIMIT_S:-470} $PY bench/gpu/ssd_round.py 2>&1 | tee "$OUT/ssd_round.log" | grep -v "Loading\|Writing\|^\[transformers\]"
echo "exit ${PIPESTATUS[0]} after $SECONDS s; full log: $OUT/ssd_round.log"
