"""Helpers of the Triton tests: start a real tritonserver (pytriton wheel) on tiny models, read metrics."""
from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

servers: list = []       # running servers, whose log tails the conftest hook adds to failure reports


def require_tritonserver() -> None:
    """Skip (not fail) where the pytriton wheel with tritonserver is not installed."""
    import pytest

    from specdec.triton.launcher import IMAGE_ROOT, _pytriton_root
    if _pytriton_root() is None and not (IMAGE_ROOT / "bin" / "tritonserver").exists():
        pytest.skip("tritonserver not installed: pip install --no-deps nvidia-pytriton==0.7.0 (scripts/install.sh)")


def gpu_under_test() -> int | None:
    """SPECDEC_TEST_GPU=N runs the deployment tests' servers on GPU N (every model instance KIND_GPU on it, the
    draft model too): the GPU machine's check of the same tests (bench/gpu/serve_gpu.sh). Unset: CPU."""
    value = os.environ.get("SPECDEC_TEST_GPU", "")
    return int(value) if value.strip() else None


def start_server(workdir: Path, settings, timeout_s: float = 240.0, exit_timeout_s: int = 30):
    """Write the repository for ``settings`` (CPU instances, or GPU ones: gpu_under_test()) and start tritonserver
    on free ports."""
    require_tritonserver()
    from specdec.triton.launcher import Ports, TritonServer
    from specdec.triton.repository import write_repository
    gpu = gpu_under_test()
    repo = write_repository(workdir / "model_repository", settings, target_gpu=gpu,
                            draft_gpu=gpu if gpu is not None and settings.separate_draft else None)
    server = TritonServer(repo, workdir, ports=Ports.free(), exit_timeout_s=exit_timeout_s)
    t0 = time.perf_counter()
    server.start()
    try:
        server.wait_ready(timeout_s)
    except Exception:
        print(server.log_tail(120))
        server.stop()
        raise
    server.startup_s = time.perf_counter() - t0
    servers.append(server)
    return server


def stop_server(server) -> None:
    code = server.stop()
    if server in servers:
        servers.remove(server)
    return code


def metrics(server) -> dict[str, float]:
    """specdec_* custom metrics of the target model (name -> value; label sets of one name, such as
    the buckets of specdec_tokens_per_round_total, are summed)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("specdec_"):
            name = line.split("{")[0].split()[0]
            out[name] = out.get(name, 0.0) + float(line.split()[-1])
    return out


def wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = predicate()
    return value


def speculates(grpc_url: str) -> bool:
    """One short greedy request through the ensemble: did the draft propose tokens for it (has it joined)?"""
    import stream_client as sc
    r = sc.generate(grpc_url, ["the quick"], max_tokens=8, temperature=0.0)[0]
    return r.error is None and (r.drafted or 0) > 0


class ServeProcess:
    """``specdec serve`` as a subprocess (what a user runs), with the TritonServer-like URLs the tests use."""

    def __init__(self, workdir: Path, args: list[str], timeout_s: float = 240.0, python: str | None = None,
                 cwd: Path | None = None):
        """``python``: the interpreter whose specdec serves (default: this one); ``cwd``: where it runs."""
        import subprocess
        import sys

        from specdec.triton.launcher import Ports
        if python is None:
            require_tritonserver()
        self.ports = Ports.free()
        self.workdir = workdir
        self.log_path = workdir / "tritonserver.log"
        self.output = workdir / "serve.out"
        cmd = [python or sys.executable, "-m", "specdec.cli", "serve", "--workdir", str(workdir), "--http-port", str(self.ports.http),
               "--grpc-port", str(self.ports.grpc), "--metrics-port", str(self.ports.metrics), *args]
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        deadline = time.monotonic() + timeout_s
        while "ready in" not in self.output.read_text() and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"specdec serve exited ({self.proc.returncode}):\n{self.output.read_text()}")
            time.sleep(0.25)
        if "ready in" not in self.output.read_text():
            self.stop()
            raise TimeoutError(f"specdec serve not ready after {timeout_s} s:\n{self.log_tail()}")
        self.http_url = f"http://127.0.0.1:{self.ports.http}"
        self.grpc_url = f"127.0.0.1:{self.ports.grpc}"
        self.metrics_url = f"http://127.0.0.1:{self.ports.metrics}/metrics"
        servers.append(self)

    def log_tail(self, lines: int = 60) -> str:
        text = self.output.read_text(errors="replace")
        if self.log_path.exists():
            text += "\n" + self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> int:
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout_s)
        if self in servers:
            servers.remove(self)
        return self.proc.returncode
