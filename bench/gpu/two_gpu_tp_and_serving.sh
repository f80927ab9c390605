#!/usr/bin/env bash
# Two H200s, run A (carries .carry/w: the nvidia-pytriton and python-rapidjson wheels).
# 1. synthetic Llama-3.1-8B on one H200 (TP 1): AR sweep b=1,16 (fraction of floor; b16 / b1) and
#    sync with a synthetic 1B draft (K=4, b=1);
# 2. Triton: target on GPU 0 and the draft as its own model on GPU 1, served vs in-process;
# 3. tensor parallelism: correctness gate (NCCL + graphs, tp_check.py), then the same runs at TP 2.
# Everything is logged to $OUT/log.txt (full step outputs in $OUT/*.log); bench reports go to $OUT/*.json; a summary table comes last.
# Dry run on a CPU machine (tiny random models, no Triton wheels needed if pytriton is installed):
#   DRY=1 OUT=/tmp/dry bash bench/gpu/h200x2_a.sh
set -u
OUT=${OUT:-/tmp/h200x2_a}
mkdir -p "$OUT" /tmp/persist
export PYTHONPATH=$PWD/backend:/tmp/site PYTHONUNBUFFERED=1 SPECDEC_CACHE=/tmp/persist/cache TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1    # never NVLink multicast
PY=${PY:-python3}
END=${END:-570}                 # seconds: serving gets what the other steps' limits leave of this
TC=150 TB=110 TS=70             # time limits: TP check, AR sweep, sync run
exec > >(tee "$OUT/log.txt") 2>&1
if [ "${DRY:-0}" = 1 ]; then
  $PY -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from tiny import make_model
make_model(Path('/tmp/dry-t'), 'llama', layers=2, hidden=256, heads=8, kv_heads=4, seed=0)
make_model(Path('/tmp/dry-d'), 'llama', layers=1, hidden=256, heads=8, kv_heads=4, seed=1)" 2>&1 | grep -v Writing
  T=/tmp/dry-t D=/tmp/dry-d DEV="--device cpu" CHK=cpu SERVE_GPUS="" NS=4 OL=8 TC=400 TB=300 TS=200 END=2000
else
  nvidia-smi --query-gpu=index,name,memory.total,clocks.sm,clocks.mem --format=csv,noheader
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .carry/w/*.whl || exit 1
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA devices', torch.cuda.device_count())"
  T=synthetic:llama-8b D=synthetic:llama-1b DEV="" CHK=cuda:0 SERVE_GPUS="--target-gpu 0 --draft-gpu 1" NS=16 OL=64
fi
B="$PY -m specdec.cli --log-level WARNING bench --target $T --output_len $OL $DEV"

# Order (since run A of 2026-11-22): one-GPU steps and serving first, the TP = 2 steps last, because
# closing a TP = 2 engine hung there ("tensor-parallel worker N did not exit; killing it", then no
# output until the time limit) and must not starve the rest. Each step's full output: $OUT/*.log.
echo "== [$SECONDS s] 8B shape on one GPU (TP 1): AR sweep b=1,16; sync with the 1B draft"
timeout $TB $B --tp 1 --b 16 --sweep b=1,16 --numseqs $NS --json "$OUT/ar_tp1.json" 2>&1 | tee -a "$OUT/bench.log" | tail -4
timeout $TS $B --tp 1 --spec --draft $D --k 4 --b 1 --numseqs 2 --json "$OUT/sync_tp1.json" 2>&1 | tee -a "$OUT/bench.log" | tail -1
LEFT=$((END - SECONDS - TC - TB - TS))
echo "== [$SECONDS s] Triton serving (target GPU 0, draft model GPU 1), ${LEFT} s for it"
if [ $LEFT -gt 60 ]; then
  timeout $LEFT $PY bench/gpu/serve_http.py --target $T --draft $D --mode sync --k 4 $SERVE_GPUS \
    --max-tokens $OL --requests 8 2>&1 | tee "$OUT/serve.log" | grep -v "Loading\|Writing\|^frame #" | tail -24
else
  echo "serving NOT run: too little time left"
fi
echo "== [$SECONDS s] TP check"
timeout $TC $PY bench/gpu/tp_check.py $CHK 2>&1 | tee "$OUT/tp_check.log" | grep -v "Loading\|Writing" | tail -12
echo "== [$SECONDS s] TP 2 timings"
timeout $TB $B --tp 2 --b 16 --sweep b=1,16 --numseqs $NS --json "$OUT/ar_tp2.json" 2>&1 | tee -a "$OUT/bench.log" | tail -4
timeout $TS $B --tp 2 --spec --draft $D --k 4 --b 1 --numseqs 2 --json "$OUT/sync_tp2.json" 2>&1 | tee -a "$OUT/bench.log" | tail -1
echo "== [$SECONDS s] summary"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out, rows, dev = Path(sys.argv[1]), {}, {}
for mode in ("ar", "sync"):
    for tp in (1, 2):
        f = out / f"{mode}_tp{tp}.json"
        if f.exists():
            d = json.loads(f.read_text())
            dev[tp] = (d.get("device_name"), d.get("bandwidth_GBs"), d.get("target_weight_bytes"))
            for r in d["runs"]:
                rows[mode, tp, r["b"]] = r
for tp, (name, bw, wb) in sorted(dev.items()):
    print(f"TP {tp}: {name}, measured bandwidth {bw:.0f} GB/s, target weights {wb / 1e9:.2f} GB per rank")
print(f"{'mode':5} {'b':>3} | {'TP1 tok/s':>9} {'frac':>5} {'TP2 tok/s':>9} {'frac':>5} {'TP2/TP1':>7} | "
      f"{'TP1 ver ms':>10} {'TP2 ver ms':>10} | {'TP1 dr ms':>9} {'TP2 dr ms':>9}")
for mode, bs in (("ar", (1, 16)), ("sync", (1,))):
    for b in bs:
        one, two = rows.get((mode, 1, b)), rows.get((mode, 2, b))
        f = lambda r, k, fmt: format(r[k], fmt) if r and r.get(k) is not None else "-"
        ratio = f"{two['decode_tok_s'] / max(one['decode_tok_s'], 1e-9):.2f}" if one and two else "-"
        print(f"{mode:5} {b:>3} | {f(one, 'decode_tok_s', '.1f'):>9} {f(one, 'fraction_of_floor', '.2f'):>5} "
              f"{f(two, 'decode_tok_s', '.1f'):>9} {f(two, 'fraction_of_floor', '.2f'):>5} {ratio:>7} | "
              f"{f(one, 'avg_verify_ms', '.2f'):>10} {f(two, 'avg_verify_ms', '.2f'):>10} | "
              f"{f(one, 'avg_draft_ms', '.2f'):>9} {f(two, 'avg_draft_ms', '.2f'):>9}")
a1, a16 = rows.get(("ar", 1, 1)), rows.get(("ar", 1, 16))
if a1:
    print(f"8B-shape AR on one GPU, b=1: {a1['decode_tok_s']:.1f} tok/s, floor {a1['floor_tok_s']:.1f}, "
          f"fraction {a1['fraction_of_floor']:.3f} (target >= 0.75)")
if a1 and a16:
    print(f"b=16 / b=1: {a16['decode_tok_s'] / a1['decode_tok_s']:.1f}x (target >= 8x); b=16 fraction "
          f"{a16['fraction_of_floor']:.3f}")
PY
echo "== [$SECONDS s] done"
