"""Python-backend stubs that would fail requests: refused at start-up, and a dead one ends `specdec serve`.

* The pytriton wheel's stub (pybind11 < 2.12) corrupts every tensor under numpy 2. An environment
  with numpy 2 (this suite's venv overlaid by one that holds numpy 2: the stub imports numpy from
  there) is refused by ``specdec serve`` before tritonserver starts, with the fix in the message;
  with that check bypassed, the start-up round trip through ``preprocessing`` catches it.
* A stub killed mid-stream (found with psutil: a ``triton_python_backend_stub`` child of
  tritonserver whose arguments name the model instance) ends ``specdec serve`` with exit code 3 and
  the instance named; ``/v2/health/ready`` stops answering, so a compose health check fails.
  (Triton 2.51 keeps ``/v2/health/ready`` and ``/v2/models/<name>/ready`` at 200 with a dead stub,
  and cannot restart it: watch.py.)
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
psutil = pytest.importorskip("psutil")
import stream_client as sc  # noqa: E402
from triton_helpers import ServeProcess, require_tritonserver, wait_for  # noqa: E402

from specdec.triton.launcher import stub_numpy_problem  # noqa: E402

pytestmark = pytest.mark.slow


# --- the stub/numpy check, without a server ------------------------------------------------------

def _fake_python(folder: Path, numpy_version: str) -> dict:
    """An environment whose python3 reports this numpy version."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "python3"
    exe.write_text(f"#!/bin/sh\nprintf '{numpy_version}'\n")
    exe.chmod(0o755)
    return {"PATH": f"{folder}:/usr/bin:/bin"}


@pytest.mark.parametrize("built_for, numpy_version, refused", [
    (b"numpy.core.multiarray", "2.4.6", True),           # the pytriton 0.7.0 stubs
    (b"numpy.core.multiarray", "1.26.4", False),
    (b"numpy._core.multiarray numpy.core.multiarray", "2.4.6", False),   # pybind11 >= 2.12
])
def test_stub_numpy_problem(tmp_path, built_for, numpy_version, refused):
    stub = tmp_path / "triton_python_backend_stub"
    stub.write_bytes(b"\x7fELF..." + built_for + b"...")
    problem = stub_numpy_problem(stub, _fake_python(tmp_path / "bin", numpy_version))
    assert (problem is not None) == refused
    if refused:
        assert f"numpy {numpy_version}" in problem and "pybind11 < 2.12" in problem and "numpy<2" in problem
    assert stub_numpy_problem(tmp_path / "missing", _fake_python(tmp_path / "bin", "2.0.0")) is None


# --- numpy 2 in the stub's environment -----------------------------------------------------------------

@pytest.fixture(scope="module")
def numpy2_python(tmp_path_factory) -> str:
    """A venv with numpy 2 whose other packages (specdec, torch, ...) are this suite's (a .pth file)."""
    require_tritonserver()
    v = tmp_path_factory.mktemp("numpy2") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(v)], check=True, timeout=120)
    py = str(v / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "numpy>=2,<3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    (Path(site) / "specdec_suite.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    version = subprocess.run([py, "-c", "import numpy, specdec; print(numpy.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("2."), version
    return py


def test_serve_refuses_a_stub_that_would_corrupt_tensors(numpy2_python, tiny_llama, tmp_path):
    t0 = time.monotonic()
    out = subprocess.run([numpy2_python, "-m", "specdec.cli", "serve", "--target", str(tiny_llama), "--mode", "ar",
                          "--cpu", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "pybind11 < 2.12" in out.stderr and "has numpy 2." in out.stderr and "pip install 'numpy<2'" in out.stderr
    assert "ready in" not in out.stdout and not (tmp_path / "tritonserver.log").exists()    # never started
    assert time.monotonic() - t0 < 120


ROUND_TRIP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from specdec.triton.launcher import Ports, TritonServer
    from specdec.triton.repository import write_repository
    from specdec.triton.settings import Settings
    from specdec.triton.watch import after_ready
    work = Path(sys.argv[2])
    repo = write_repository(work / "model_repository", Settings(target=sys.argv[1], draft="", mode="ar", cpu_threads=1))
    server = TritonServer(repo, work, ports=Ports.free(), exit_timeout_s=5)
    server.start(check_stub=False)            # what the launcher's check would refuse
    try:
        server.wait_ready(180)
        after_ready(server)
        print("ROUND TRIP PASSED")
    except RuntimeError as e:
        print(f"REFUSED: {e}")
    finally:
        server.stop(20)
""")


def test_round_trip_catches_a_stub_that_corrupts_tensors(numpy2_python, tiny_llama, tmp_path):
    out = subprocess.run([numpy2_python, "-c", ROUND_TRIP, str(tiny_llama), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert "REFUSED: start-up check:" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "preprocessing" in out.stdout and "unpack_from requires a buffer" in out.stdout   # the stub's own last words


# --- a stub dies while serving ---------------------------------------------------------------------------

def _ready_status(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def test_a_dead_stub_ends_specdec_serve(tiny_llama, tmp_path):
    srv = ServeProcess(tmp_path, ["--target", str(tiny_llama), "--mode", "ar", "--cpu", "--cpu-threads", "1"])
    try:
        (tritonserver,) = [p for p in psutil.Process(srv.proc.pid).children() if p.name() == "tritonserver"]
        (stub,) = [p for p in tritonserver.children() if p.name().startswith("triton_python_b")
                   and "target_0_0" in p.cmdline()]
        for model in ("preprocessing", "target", "postprocessing", "ensemble"):
            assert urllib.request.urlopen(f"{srv.http_url}/v2/models/{model}/ready", timeout=5).status == 200
        first, out = threading.Event(), {}

        def stream():
            inputs = sc.make_inputs("the quick brown fox", 400, temperature=0.0,
                                    extra={"min_length": np.array([[400]], np.int32)})
            out["r"] = sc.generate(srv.grpc_url, ["x"], inputs=[inputs], on_text=lambda i, t: first.set(), timeout_s=60)[0]
        thread = threading.Thread(target=stream)
        thread.start()
        assert first.wait(60), srv.log_tail(30)
        killed_at = time.monotonic()
        stub.kill()                                            # the target model's process dies mid-stream
        assert wait_for(lambda: _ready_status(srv.http_url) != 200, timeout_s=10), "still ready with a dead stub"
        thread.join(60)
        assert out["r"].error is not None and out["r"].tokens < 400          # the stream ends with an error
        srv.proc.wait(60)
        assert time.monotonic() - killed_at < 30              # seen: 11 s (the dead model never unloads)
    finally:
        code = srv.stop()
    text = srv.output.read_text()
    assert code == 3, text
    assert "the stub process of model instance 'target_0_0'" in text and "cannot restart it" in text, text
    assert _ready_status(srv.http_url) == 0                   # nothing answers on the port any more
    assert not tritonserver.is_running()
