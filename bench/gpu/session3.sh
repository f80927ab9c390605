#!/usr/bin/env bash
# One host sync per round: draft step and verify times (H100), synthetic shapes only.
set -u
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
B="python3 -m specdec.cli --log-level WARNING bench"
python3 bench/gpu/check_graphs.py 2>&1 | grep -v "Loading\|Writing"
$B --target synthetic:smollm2-135m --numseqs 4 --output_len 128 --b 1 2>&1 | tail -1
$B --target synthetic:smollm2-135m --spec --draft self:4 --k 4 --numseqs 4 --output_len 128 --b 1 2>&1 | tail -1
$B --target synthetic:llama-8b --numseqs 2 --output_len 128 --b 1 2>&1 | tail -1
$B --target synthetic:llama-8b --spec --draft synthetic:llama-1b --k 8 --sweep k=1,4,8 --numseqs 2 --output_len 64 2>&1 | tail -4
$B --target synthetic:llama-8b --spec --draft synthetic:llama-1b --k 4 --b 16 --numseqs 16 --output_len 64 2>&1 | tail -1
$B --target synthetic:llama-8b --b 16 --numseqs 16 --output_len 64 2>&1 | tail -1
