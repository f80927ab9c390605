"""Start ``tritonserver`` for a model repository: the image's own, or the one in the pytriton wheel.

Without Docker, the ``nvidia-pytriton`` wheel carries a real ``tritonserver`` and the Python
backend. It needs (see /work/shared/FIELD-NOTES.md): a backend folder ``<dir>/python/`` with
``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub built for *this*
interpreter's Python version; ``LD_LIBRARY_PATH`` with the wheel's libs and this interpreter's own
libdir (the stub links libpython; a different libpython breaks C extensions in the models); and
this venv's ``bin/`` first on PATH.

The wheel's stub was built with pybind11 < 2.12, which reads a numpy dtype's item size at the
numpy 1.x offset: under numpy 2 every tensor it hands to Python or takes back is corrupted (a
BYTES input kills the stub on the first request). :func:`stub_numpy_problem` refuses that pairing
before tritonserver starts; ``watch.check_round_trip`` proves the stub right after it is ready.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..processes import free_ports

log = logging.getLogger(__name__)

IMAGE_ROOT = Path("/opt/tritonserver")     # inside nvcr.io/nvidia/tritonserver images
STUB = "triton_python_backend_stub"
NUMPY_FIX = "pip install 'numpy<2' (the `serve` extra pins it)"


@dataclass(slots=True)
class Installation:
    tritonserver: Path
    backend_dir: Path
    env: dict = field(default_factory=dict)


def _pytriton_root() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").exists() else None


def find_installation(workdir: Path, tritonserver: str | None = None) -> Installation:
    """The image's tritonserver when there is one, else the wheel's (with a backend folder in workdir)."""
    if tritonserver is None and (IMAGE_ROOT / "bin" / "tritonserver").exists() and \
            (IMAGE_ROOT / "backends" / "python").exists():
        return Installation(IMAGE_ROOT / "bin" / "tritonserver", IMAGE_ROOT / "backends", _env(None))
    root = _pytriton_root()
    if tritonserver is not None:
        binary = Path(tritonserver)
    elif root is not None:
        binary = root / "bin" / "tritonserver"
    else:
        raise FileNotFoundError("no tritonserver found: install the wheel with `pip install --no-deps "
                                "nvidia-pytriton==0.7.0`, or run inside an nvcr.io/nvidia/tritonserver image")
    if root is None:
        raise FileNotFoundError("the Python backend was not found: install `nvidia-pytriton==0.7.0 --no-deps`")
    return Installation(binary, build_backend_dir(root, workdir / "backends"), _env(root.parent.parent))


def build_backend_dir(pytriton_root: Path, dest: Path) -> Path:
    """``dest/python/`` holding the Python backend and the stub for this interpreter (symlinks)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = pytriton_root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"the pytriton wheel has no Python backend stub for Python {version} ({stub})")
    files = [pytriton_root / "backends" / "python" / "libtriton_python.so",
             pytriton_root / "backends" / "python" / "triton_python_backend_utils.py", stub]
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = py / f.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f)
    return dest


def stub_numpy_problem(stub: Path, env: dict) -> str | None:
    """Why ``stub`` would corrupt tensors in the environment it runs in (``env``), or None.

    A stub built with pybind11 >= 2.12 names ``numpy._core`` (numpy 2's module); one without that
    string reads numpy 2 dtypes wrongly. The stub's interpreter is the ``python3`` first on the
    PATH it is started with (its venv), so that is where numpy's version is asked.
    """
    try:
        if b"numpy._core" in Path(stub).read_bytes():
            return None
    except OSError:
        return None                     # no stub to read: tritonserver will say so itself
    out = subprocess.run(["python3", "-c", "import numpy, sys; sys.stdout.write(numpy.__version__)"],
                         env=env, capture_output=True, text=True, timeout=60)
    version = out.stdout.strip()
    if out.returncode != 0 or not version:
        return None                     # no numpy there: the models fail to import, loudly, at load
    if int(version.split(".")[0]) < 2:
        return None
    where = shutil.which("python3", path=env.get("PATH"))
    return (f"the Python backend stub {stub} was built with pybind11 < 2.12 and corrupts every tensor "
            f"under numpy 2, and its interpreter ({where}) has numpy {version}: every request would fail "
            f"(the first one kills the preprocessing stub). Fix: {NUMPY_FIX}")


def _env(site_packages: Path | None) -> dict:
    env = dict(os.environ)
    libs = []
    if site_packages is not None:
        libs.append(str(site_packages / "nvidia_pytriton.libs"))
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        libs.append(libdir)           # the stub must find THIS interpreter's libpython
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclass(slots=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> "Ports":
        return cls(*free_ports(3, host))


class TritonServer:
    """A running tritonserver: ``start()``, ``wait_ready()``, ``stop()``; its log goes to ``log_path``."""

    def __init__(self, repository: Path, workdir: Path, host: str = "127.0.0.1", ports: Ports | None = None,
                 tritonserver: str | None = None, log_path: Path | None = None, verbose: bool = False,
                 exit_timeout_s: int = 15):
        self.repository = Path(repository)
        self.workdir = Path(workdir)
        self.host = host
        self.ports = ports or Ports()
        self.install = find_installation(self.workdir, tritonserver)
        self.log_path = Path(log_path) if log_path else self.workdir / "tritonserver.log"
        self.verbose = verbose
        self.exit_timeout_s = exit_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        p = self.ports
        cmd = [str(self.install.tritonserver), f"--model-repository={self.repository}",
               f"--backend-directory={self.install.backend_dir}", "--model-control-mode=none",
               f"--http-address={self.host}", f"--http-port={p.http}",
               f"--grpc-address={self.host}", f"--grpc-port={p.grpc}",
               f"--metrics-address={self.host}", f"--metrics-port={p.metrics}",
               "--backend-config=python,stub-timeout-seconds=120",
               "--disable-auto-complete-config",      # configs are complete; saves a stub start per model
               f"--exit-timeout-secs={self.exit_timeout_s}"]
        if self.verbose:
            cmd.append("--log-verbose=1")
        return cmd

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports.metrics}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host

    def start(self, check_stub: bool = True) -> "TritonServer":
        """Start tritonserver; first refuse (RuntimeError) a stub that would corrupt tensors."""
        if check_stub:
            self.check_stub()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        log.info("starting: %s", " ".join(self.command))
        self.proc = subprocess.Popen(self.command, stdout=logf, stderr=subprocess.STDOUT, env=self.install.env,
                                     start_new_session=True)
        logf.close()
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def check_stub(self) -> None:
        """Raise RuntimeError if the Python-backend stub would corrupt tensors in its environment."""
        problem = stub_numpy_problem(self.install.backend_dir / "python" / STUB, self.install.env)
        if problem:
            raise RuntimeError(problem)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.proc.returncode} before it was ready; "
                                   f"last log lines:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f} s; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGINT (graceful: models' finalize runs), then SIGKILL to the process group after a timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        timeout_s = timeout_s if timeout_s is not None else self.exit_timeout_s + 10
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not exit in %.0f s; killing it", timeout_s)
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def clean_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
