"""Child processes: the one place that starts and stops them.

specdec starts three kinds of children, all ``python -m specdec....`` modules:

* tensor-parallel ranks 1..N-1 of the target (``specdec.parallel.worker``, started by parallel/tp.py);
* the SSD draft worker (``specdec.draft.worker``), started by draft/link.py for ``LLM(mode="async")``
  and by the Triton ``draft`` model (triton/draft.py) for ``draft_location=separate``.

Each child is tied to its parent: it gets ``--parent-pid`` and exits when that process is gone.
A caller whose spawning thread lives as long as the child (the Triton draft model's supervisor
thread) may also ask the kernel to kill the child when that thread ends (``PR_SET_PDEATHSIG``: it
fires when the spawning *thread* exits, not the process, so a short-lived thread must not use it).
:func:`stop_process` is how a parent ends one: it waits for a child that was asked to exit, then kills it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl      # looked up here, not in the forked child
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when its parent dies (Linux only)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def python_executable() -> str:
    """The interpreter to start a child with. Embedded interpreters (Triton's python backend stub)
    may report their host binary as sys.executable; fall back to the base interpreter or PATH."""
    for exe in (sys.executable, getattr(sys, "_base_executable", None), shutil.which("python3")):
        if exe and os.path.basename(exe).startswith("python"):
            return exe
    raise RuntimeError("no Python interpreter found to start a specdec worker process")


def spawn(module: str, args: list[str], die_with_thread: bool = False, **popen_kwargs) -> subprocess.Popen:
    """Start ``python -m module args... --parent-pid <this pid>``; with ``die_with_thread`` the kernel
    also kills it when the calling thread ends (see above)."""
    cmd = [python_executable(), "-m", module, *args, "--parent-pid", str(os.getpid())]
    return subprocess.Popen(cmd, preexec_fn=_die_with_parent if die_with_thread else None, **popen_kwargs)


def stop_process(p: subprocess.Popen, grace_s: float, what: str) -> None:
    """Wait up to ``grace_s`` for a child that was asked to exit, then kill it (and reap it)."""
    try:
        p.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("%s %d did not exit; killing it", what, p.pid)
        p.kill()
        p.wait()


def parent_gone(parent_pid: int | None) -> bool:
    """For a child: True once the process that started it has exited (we were re-parented)."""
    return parent_pid is not None and os.getppid() != parent_pid


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (another process may still take it before we bind)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free right now: each socket stays bound until all are picked (ports picked one
    after another may repeat, and a server given the same port twice fails to start)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
