#!/usr/bin/env bash
# SSD's intended placement on two GPUs: target on GPU 0, draft worker on GPU 1 (issue: multi-GPU runs).
#   1. 8B-shaped target + 1B-shaped draft (random weights): AR, sync, async at b=1 and b=8, with
#      acceptance SIMULATED at A=0.7 / hit H=0.8 and unsimulated (every round a miss);
#   2. SmolLM2-135M + its shipped draft (needs the GGUF parked in /tmp/persist, bench/gpu/smollm2_carry.sh);
#   3. the same served through Triton with the draft as its own instance on GPU 1 (needs the
#      nvidia-pytriton wheel installed into /tmp/site).
# Targets: async >= 1.3x sync (simulated, b=1), >= 1.1x (b=8). Logs under $OUT; a table at the end.
#   bash bench/gpu/two_gpu_ssd.sh        (kind nvidia-h200-x2 or nvidia-h100-x2)
set -uo pipefail
export PYTHONPATH=$PWD/backend:/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B="python3 -m specdec.cli bench --target synthetic:llama-8b --draft synthetic:llama-1b --k 4 --output_len 64 --numseqs 8"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$OUT/summary.txt"
run() { local name=$1; shift; echo "=== $name" | tee -a "$OUT/summary.txt"
        timeout 150 "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1; tail -4 "$OUT/$name.log" | tee -a "$OUT/summary.txt"; }
for b in 1 8; do
  run ar_b$b $B --b $b
  for sim in "" "--simulate-acceptance 0.7 --simulate-hit 0.8"; do
    tag=${sim:+_sim}
    run sync_b$b$tag $B --b $b --spec $sim
    run async_b$b$tag $B --b $b --spec --async --draft-device cuda:1 $sim
  done
done
if [ -f /tmp/persist/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  S="python3 -m specdec.cli bench --target /tmp/persist/SmolLM2-135M-Instruct.Q4_1.gguf --k 4 --output_len 128 --numseqs 8 --chat"
  run smol_ar $S --b 1
  run smol_sync $S --b 1 --spec --draft smollm2-135m-draft
  run smol_async $S --b 1 --spec --async --draft smollm2-135m-draft --draft-device cuda:1
fi
if python3 -c "import pytriton" 2>/dev/null; then
  timeout 300 python3 bench/gpu/serve_http.py --target synthetic:llama-8b --draft synthetic:llama-1b --target-gpu 0 \
      --draft-gpu 1 > "$OUT/serve.log" 2>&1; tail -12 "$OUT/serve.log" | tee -a "$OUT/summary.txt"
fi
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\n{'run':16} {'tok/s':>8} {'tau':>5} {'acc.rate':>8} {'hit':>5} {'verify ms':>9} {'draft ms':>8}")
for f in sorted(out.glob("*.json")):
    for r in json.loads(f.read_text())["runs"]:
        print(f"{f.stem:16} {r['decode_tok_s']:>8.1f} {r['tokens_per_round']:>5.2f} {r['acceptance']:>8.2f} "
              f"{r['cache_hit_rate']:>5.2f} {r['avg_verify_ms']:>9.2f} {r['avg_draft_ms']:>8.2f}")
PY
