#!/usr/bin/env bash
# Download flash-attn-4 and what it needs (cp312 manylinux x86_64 wheels) for the GPU machine, and lay them out
# in carry folders .carry/fa4a, .carry/fa4b, ... that each fit one device call. Run HERE (the CPU machine reaches
# PyPI; the GPU machine reaches nothing). Prints the command of each device call.
#
# Size: a device call carries at most 64 MiB, the working tree (tracked + untracked-not-ignored files) included.
# This repo's tracked files are ~31 MiB (drafts/ holds a 28 MB model), so a folder gets what is left (minus
# 2 MiB of margin), or FA4_FOLDER_MIB. The -libs-cu13 wheel (~88 MiB) is cut with split into parts.
# Versions: flash-attn-4 4.0.0b36 ran on an H100 with torch 2.11+cu130 (FIELD-NOTES.md); the others are the
# newest that satisfy its Requires-Dist (checked 2026-12-07). The GPU machine already has torch, numpy,
# einops, cuda-bindings, protobuf and typing_extensions; nvidia-cutlass-dsl's -libs-cu12 is left out (CUDA 13).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
FA4=${FA4_VERSION:-4.0.0b36}
CUTLASS=4.8.1
PKGS=("flash-attn-4==$FA4" "nvidia-cutlass-dsl==$CUTLASS" "nvidia-cutlass-dsl-libs-base==$CUTLASS"
      "nvidia-cutlass-dsl-libs-core==$CUTLASS" "nvidia-cutlass-dsl-libs-cu13==$CUTLASS"
      "apache-tvm-ffi==0.1.15.post2" "torch-c-dlpack-ext==0.1.5" "quack-kernels==0.6.5")

git check-ignore -q .whl/x && git check-ignore -q .carry/x || { echo ".whl/ and .carry/ must be git-ignored" >&2; exit 1; }
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${PKGS[@]}" 2>&1 | grep -v "^WARNING: Location" || true

wheels=()
for p in "${PKGS[@]}"; do
    name=${p%%==*}; ver=${p##*==}
    f=$(ls .whl/"${name//-/_}"-"$ver"-*.whl 2>/dev/null | head -1)
    [ -n "$f" ] || { echo "missing wheel for $p in .whl/" >&2; exit 1; }
    wheels+=("$f")
    echo "$(basename "$f"): $(unzip -p "$f" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/Requires-Dist: //' | paste -sd, -)"
done

# what a call may carry next to the working tree
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
mib=$((1024 * 1024))
budget=$(( ${FA4_FOLDER_MIB:-$(( (64 * mib - tree) / mib - 2 ))} * mib ))
[ "$budget" -gt $((8 * mib)) ] || { echo "the working tree ($((tree / mib)) MiB) leaves no room to carry wheels" >&2; exit 1; }

big=$(ls .whl/nvidia_cutlass_dsl_libs_cu13-$CUTLASS-*.whl)
small=(); for f in "${wheels[@]}"; do [ "$f" = "$big" ] || small+=("$f"); done
small_bytes=$(stat -c %s "${small[@]}" | awk '{s+=$1} END {print s}')
total=$(( $(stat -c %s "$big") + small_bytes ))
folders=$(( (total + 4 * mib + budget - 1) / budget ))
part=$(( ($(stat -c %s "$big") + folders - 1) / folders ))

rm -rf .carry/fa4?
letters=(a b c d e f g h)
mkdir -p .carry/parts.tmp
split -b "$part" -a 2 "$big" ".carry/parts.tmp/$(basename "$big").part-"
parts=(.carry/parts.tmp/*.part-*)
sha256sum "$big" | sed "s#  .*/#  /tmp/fa4in/#" > .carry/parts.tmp/cu13.sha256
for i in $(seq 0 $((folders - 1))); do
    mkdir -p ".carry/fa4${letters[$i]}"
    mv "${parts[$i]}" ".carry/fa4${letters[$i]}/"
done
mv .carry/parts.tmp/cu13.sha256 ".carry/fa4${letters[$((folders - 1))]}/"
rmdir .carry/parts.tmp
for f in "${small[@]}"; do                     # first fit
    for i in $(seq 0 $((folders - 1))); do
        d=".carry/fa4${letters[$i]}"
        used=$(du -sb "$d" | cut -f1)
        if [ $((used + $(stat -c %s "$f"))) -le "$budget" ]; then cp "$f" "$d/"; continue 2; fi
    done
    echo "no folder has room for $f: set FA4_FOLDER_MIB or carry less" >&2; exit 1
done

last=".carry/fa4${letters[$((folders - 1))]}"
echo
echo "working tree $((tree / mib)) MiB; folders of at most $((budget / mib)) MiB:"
du -sh .carry/fa4?
echo
echo "On the GPU machine, $folders consecutive device calls while it stays held (files under /tmp survive between them):"
for i in $(seq 0 $((folders - 2))); do
    d=".carry/fa4${letters[$i]}"
    echo "  call $((i + 1)), carry [\"$d\"]:  mkdir -p /tmp/fa4in && cp $d/* /tmp/fa4in/ && ls /tmp/fa4in"
done
cat <<EOF
  call $folders, carry ["$last"]:
    mkdir -p /tmp/fa4in && cp $last/* /tmp/fa4in/ && cat /tmp/fa4in/$(basename "$big").part-* > /tmp/fa4in/$(basename "$big") && rm /tmp/fa4in/*.part-* && sha256sum -c /tmp/fa4in/cu13.sha256 && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa4 /tmp/fa4in/*.whl && export PYTHONPATH=/tmp/fa4:/tmp/fa4/nvidia_cutlass_dsl/dsl_packages:\$PWD/backend FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 && python3 -c "from flash_attn.cute.interface import flash_attn_varlen_func; print('flash-attn-4 imports')" && python3 bench/gpu/attention_table.py
EOF
