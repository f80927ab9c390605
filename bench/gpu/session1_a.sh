#!/usr/bin/env bash
# GPU session 1, part A (H100): environment, graph correctness on tiny models, synthetic 8B/1B step times.
# Carries .carry/a (first half of the SmolLM2 GGUF + the gguf wheel), parked in /tmp/persist for part B.
set -u
export PYTHONPATH=$PWD/backend PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/persist && cp .carry/a/* /tmp/persist/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,transformers;print('torch',torch.__version__,'transformers',transformers.__version__,torch.cuda.get_device_name())"
B="python3 -m specdec.cli --log-level WARNING bench"
python3 bench/gpu/check_graphs.py 2>&1 | grep -v "Loading\|Writing" | tee $OUT/check_graphs.txt
$B --target synthetic:llama-8b --numseqs 2 --output_len 128 --b 1 --json $OUT/s8b_ar_b1.json 2>&1 | tee $OUT/s8b_ar_b1.txt
$B --target synthetic:llama-8b --numseqs 2 --output_len 64 --b 1 --eager --json $OUT/s8b_ar_b1_eager.json 2>&1 | tee $OUT/s8b_ar_b1_eager.txt
$B --target synthetic:llama-8b --spec --draft synthetic:llama-1b --k 8 --sweep k=1,2,4,8 --numseqs 2 --output_len 64 --json $OUT/s8b_sync_k.json 2>&1 | tee $OUT/s8b_sync_k.txt
$B --target synthetic:llama-8b --b 16 --numseqs 16 --output_len 64 --json $OUT/s8b_ar_b16.json 2>&1 | tee $OUT/s8b_ar_b16.txt
ls -la /tmp/persist
