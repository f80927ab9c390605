"""The ``draft`` Triton model: a draft model in its own instance (its own GPU), reached directly.

With ``draft_location: separate`` the instance supervises a draft worker *process*
(``python -m specdec.draft.worker``) on its device: the worker joins the target through a
torch.distributed channel at ``rendezvous`` and answers the target's draft requests there, never
through Triton requests. ``initialize`` does not wait for the target (nor the target for it): both
connect in the background and the target serves AR until the draft has joined.

Why a process and not a thread of this stub: a draft that dies (killed, out of memory, a crashed
kernel) takes only the worker down. The target notices the broken channel, finishes its in-flight
requests in AR mode and waits at the same rendezvous; this model starts a new worker (after a
back-off when workers die quickly), which joins again, and the target speculates again. The worker
is tied to this stub (``PR_SET_PDEATHSIG``), so killing the stub process, the draft's Triton
instance, ends the worker too; Triton 2.51 does not restart a dead stub and model control is off,
so the target then stays in AR mode until a worker joins the rendezvous another way (a restart of
the server, or ``python -m specdec.draft.worker --rendezvous ...`` by hand).

With ``in_target`` (the default) the target runs the draft itself and this model stays idle. Its
only request, ``status``, reports which of these is the case, the worker's pid and its restarts.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time

from ..processes import spawn
from . import pbio
from .settings import instance_device, read_settings

QUICK_EXIT_S = 30.0          # a worker that ran less than this counts as failing at startup
MAX_BACKOFF_S = 30.0


def worker_args(s, device) -> list[str]:
    """The draft worker's arguments for these settings (it connects to the target's rendezvous)."""
    args = ["--config", s.worker_config(device).to_json(), "--rendezvous", s.rendezvous,
            "--connect-timeout", "1e9", "--log-level", "INFO"]
    if s.cpu_threads:
        args += ["--num-threads", str(s.cpu_threads)]
    return args


class DraftModel:
    def initialize(self, args):
        self.log = pbio.setup_logging(args["model_name"])
        self.settings = s = read_settings(args)
        self.device = instance_device(args)
        self.state = {"draft_location": s.draft_location, "draft": s.draft, "device": str(self.device),
                      "rendezvous": s.rendezvous, "worker_pid": None, "worker_starts": 0, "last_exit_code": None}
        self.stop = threading.Event()
        self.thread = None
        self.proc: subprocess.Popen | None = None
        if not s.separate_draft:
            self.state["status"] = "idle"
            self.log.info("idle: draft_location=%s mode=%s (the target runs its draft itself, if any)",
                          s.draft_location, s.mode)
            return
        self.args = worker_args(s, self.device)
        self.log.info("draft %s on %s: a worker process joins the target at %s in the background", s.draft,
                      self.device, s.rendezvous)
        self.thread = threading.Thread(target=self._supervise, name="specdec-draft", daemon=True)
        self.thread.start()

    def _supervise(self) -> None:
        """Keep one worker running until finalize; restart it whenever it exits."""
        backoff = 1.0
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                self.proc = spawn("specdec.draft.worker", self.args, die_with_thread=True)   # this thread supervises it
            except OSError as e:
                self.state["status"] = f"failed to start: {e}"
                self.log.error("draft worker could not start (the target serves AR): %s", e)
                self.stop.wait(MAX_BACKOFF_S)
                continue
            self.state.update(status="running", worker_pid=self.proc.pid, worker_starts=self.state["worker_starts"] + 1)
            self.log.info("draft worker %d started", self.proc.pid)
            while self.proc.poll() is None and not self.stop.is_set():
                self.stop.wait(0.2)
            if self.stop.is_set():
                break
            code = self.proc.returncode
            self.state.update(status="restarting", worker_pid=None, last_exit_code=code)
            lived = time.monotonic() - t0
            if lived > QUICK_EXIT_S:
                backoff = 1.0                       # it had been serving: restart at once
            delay, backoff = backoff, min(2 * backoff, MAX_BACKOFF_S)
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            log = self.log.info if code == 0 else self.log.warning
            log("draft worker %d ended (%s) after %.0f s; starting a new one in %.0f s", self.proc.pid, how, lived, delay)
            self.stop.wait(delay)
        self.state["status"] = "stopped"

    def finalize(self):
        self.stop.set()
        if self.thread is not None:
            self.thread.join(10)
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def execute(self, requests):
        pb_utils = pbio.pb()
        status = json.dumps(self.state)
        return [pb_utils.InferenceResponse(output_tensors=[pbio.string_tensor("status", status)]) for _ in requests]
