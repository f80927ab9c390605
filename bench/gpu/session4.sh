#!/usr/bin/env bash
# Triton paged-attention kernel on the GPU: correctness, kernel count, throughput (H100, synthetic shapes).
set -u
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
B="python3 -m specdec.cli --log-level WARNING bench"
python3 -m pytest -q -p no:cacheprovider tests/test_triton_attention.py 2>&1 | tail -2
python3 bench/gpu/check_graphs.py 2>&1 | grep -v "Loading\|Writing"
python3 bench/gpu/profile_step.py --target synthetic:smollm2-135m 2>&1 | grep "ms/step"
python3 bench/gpu/profile_step.py --target synthetic:llama-8b 2>&1 | grep "ms/step"
$B --target synthetic:smollm2-135m --numseqs 4 --output_len 128 --b 1 2>&1 | tail -1
$B --target synthetic:smollm2-135m --numseqs 4 --output_len 128 --b 1 --eager 2>&1 | tail -1
$B --target synthetic:llama-8b --numseqs 2 --output_len 128 --b 1 2>&1 | tail -1
$B --target synthetic:llama-8b --spec --draft synthetic:llama-1b --k 8 --sweep k=1,4,8 --numseqs 2 --output_len 64 2>&1 | tail -3
$B --target synthetic:llama-8b --b 16 --numseqs 16 --output_len 64 2>&1 | tail -1
