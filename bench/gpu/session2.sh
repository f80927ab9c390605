#!/usr/bin/env bash
# Overhead round 1 check (H100), synthetic shapes only (no weights to carry).
set -u
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
B="python3 -m specdec.cli --log-level WARNING bench"
python3 bench/gpu/profile_step.py --target synthetic:smollm2-135m 2>&1 | grep -v Warning | head -30
python3 bench/gpu/profile_step.py --target synthetic:llama-8b 2>&1 | grep -v Warning | head -8
$B --target synthetic:smollm2-135m --numseqs 4 --output_len 128 --b 1 2>&1 | tail -3
$B --target synthetic:llama-8b --numseqs 2 --output_len 128 --b 1 2>&1 | tail -3
$B --target synthetic:llama-8b --spec --draft synthetic:llama-1b --k 8 --sweep k=1,2,4,8 --numseqs 2 --output_len 64 2>&1 | tail -6
