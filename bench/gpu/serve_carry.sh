#!/usr/bin/env bash
# Build the two archives bench/gpu/serve_gpu.sh needs on the GPU machine (each fits one call beside the repository):
#   .carry/ts/tsmin.tar.xz  the server-only part of nvidia-pytriton 0.7.0 (tritonserver, the Python backend, the
#                           Python 3.12 stub, its libraries less the bundled libpython 3.13): ~27 MB
#   .carry/np/pkgs.tar.xz   numpy 1.26.4 (the stub needs numpy < 2), tritonclient 2.48.0 (perf_analyzer),
#                           python-rapidjson, the CUDA 12 runtime and Debian's libb64 (perf_analyzer's): ~21 MB
# Needs the project venv with nvidia-pytriton installed (scripts/install.sh) and PyPI/Debian access.
set -euo pipefail
cd "$(dirname "$0")/../.."
SITE=$(.venv/bin/python -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p "$W/ts/site/pytriton/tritonserver/python_backend_stubs" .carry/ts .carry/np
cp -a "$SITE/pytriton/tritonserver/bin" "$SITE/pytriton/tritonserver/backends" "$W/ts/site/pytriton/tritonserver/"
cp -a "$SITE/pytriton/tritonserver/python_backend_stubs/3.12" "$W/ts/site/pytriton/tritonserver/python_backend_stubs/"
cp -a "$SITE/nvidia_pytriton.libs" "$W/ts/site/" && rm -f "$W"/ts/site/nvidia_pytriton.libs/libpython3-*
tar cJf .carry/ts/tsmin.tar.xz -C "$W/ts" site
mkdir -p "$W/np/site" "$W/whl"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$W/whl" numpy==1.26.4 tritonclient==2.48.0 python-rapidjson nvidia-cuda-runtime-cu12==12.6.77
for w in "$W"/whl/*.whl; do unzip -q -o "$w" -d "$W/np/site"; done
(cd "$W/np" && apt-get download libb64-0d)
tar cJf .carry/np/pkgs.tar.xz -C "$W/np" .
ls -la .carry/ts .carry/np
