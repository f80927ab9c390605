"""Helpers of the Triton tests: start a real tritonserver (pytriton wheel) on tiny models, read metrics."""
from __future__ import annotations

import time
import urllib.request
from pathlib import Path

servers: list = []       # running servers, whose log tails the conftest hook adds to failure reports


def start_server(workdir: Path, settings, timeout_s: float = 240.0):
    """Write the repository for ``settings`` (CPU instances) and start tritonserver on free ports."""
    from specdec.triton.launcher import Ports, TritonServer
    from specdec.triton.repository import write_repository
    repo = write_repository(workdir / "model_repository", settings)
    server = TritonServer(repo, workdir, ports=Ports.free(), exit_timeout_s=30)
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
    """specdec_* custom metrics of the target model (name -> value)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return {line.split("{")[0]: float(line.split()[-1]) for line in text.splitlines() if line.startswith("specdec_")}


def wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = predicate()
    return value
