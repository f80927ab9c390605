#!/usr/bin/env bash
# Issue-2 CPU table: SmolLM2-135M float32, 8 chat prompts x 64 tokens, batch 1: specdec AR vs HF
# generate (same run), sync with self:8 and ngram at K = 2/4/6 (verify time per round against K).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/specdec-cpu}; mkdir -p "$OUT"
B=".venv/bin/specdec --log-level WARNING bench --device cpu --dtype float32 --chat --numseqs 8 --output_len 64 --b 1"
$B --baseline hf --json "$OUT/ar.json" 2>&1 | grep -v Loading
$B --spec --draft ngram --k 6 --sweep k=2,4,6 --baseline hf --json "$OUT/ngram.json" 2>&1 | grep -v Loading
$B --spec --draft self:8 --k 6 --sweep k=2,4,6 --json "$OUT/self8.json" 2>&1 | grep -v Loading
