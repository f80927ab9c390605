"""Health of a running deployment beyond Triton's own ready flag: a start-up round trip and a stub watcher.

Triton 2.51 (the pytriton wheel's server, and the Python backend of that release) reports a model
READY for as long as it is loaded, also after the model's stub process has died: ``/v2/health/ready``
and ``/v2/models/<name>/ready`` keep answering 200 while every request to that model gets "Stub
process '<instance>' is not healthy." The Python backend of that release never restarts a stub, and
with model control mode ``none`` nothing can reload the model. So ``specdec serve``:

* before it reports ready, sends one known request straight to ``preprocessing`` and checks the
  answer against the tokenizer (:func:`check_round_trip`): a stub that corrupts tensors (numpy 2
  under the wheel's stub, launcher.py) fails here instead of on the first client's request;
* afterwards polls the stub processes (:class:`StubWatcher`). A dead stub of a model the ensemble
  needs ends the server: ``specdec serve`` stops tritonserver and exits non-zero with the stub's last
  error from the server log, so an orchestrator's health check fails and it restarts the server. A
  dead ``draft`` stub is only reported: the target keeps serving autoregressively (docs/operations.md).
"""
from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from .launcher import STUB

log = logging.getLogger(__name__)

OPTIONAL_MODELS = ("draft",)          # the target serves AR without it
ROUND_TRIP_TEXT = "specdec start-up check: caf\u00e9 \u2713 12345"
ROUND_TRIP_STOPS = ["ab", "\u00e9\u00e9"]
# what a dying stub leaves in tritonserver's log (its stderr goes there too)
_STUB_DEATH = re.compile(r"terminate called|what\(\):|Traceback|^\s*\w+(Error|Exception)\b|Signal \(|Segmentation fault|"
                         r"core dumped|Stub process")


def after_ready(server) -> "StubWatcher":
    """Once tritonserver is ready: a watcher over its stubs, then the round trip (RuntimeError if it fails).

    The tokenizer and limits are those ``preprocessing`` was configured with (its config.pbtxt in
    the generated repository).
    """
    from .preprocessing import input_byte_cap, load_tokenizer_and_limit
    from .repository import read_config
    watcher = StubWatcher(server.proc.pid, server.repository, server.log_path)
    config = server.repository / "preprocessing" / "config.pbtxt"
    params = {k: v.string_value for k, v in read_config(config).parameters.items()} if config.exists() else {}
    if not params.get("target"):
        log.warning("no preprocessing model with a 'target' parameter in %s: start-up round trip skipped",
                    server.repository)
        return watcher
    tokenizer, max_model_len = load_tokenizer_and_limit(params["target"], int(params.get("max_model_len") or 0))
    cap = int(params.get("max_input_bytes") or 0) or input_byte_cap(tokenizer, max_model_len)
    try:
        check_round_trip(server.http_url, tokenizer, max_model_len, cap)
    except RuntimeError as e:
        raise RuntimeError(f"{e}{watcher.log_excerpt('preprocessing')}") from None
    return watcher


def check_round_trip(http_url: str, tokenizer, max_model_len: int, max_input_bytes: int,
                     timeout_s: float = 60.0) -> None:
    """One request straight to ``preprocessing``; raise RuntimeError unless its outputs are right.

    The request carries a multi-byte BYTES input, a two-element BYTES input and an INT32 input; the
    answer must hold exactly the tokenizer's ids (INT32 out) and a ``sampling_parameters`` JSON (BYTES
    out) with the values sent. A stub that corrupts tensors fails one of these (or dies).
    """
    text = ROUND_TRIP_TEXT
    if len(text.encode()) > max_input_bytes or len(tokenizer.encode(text)) + 3 >= max_model_len:
        text = "a"                      # a deployment with tiny limits: still a BYTES round trip
    body = {"inputs": [
        {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": [text]},
        {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [3]},
        {"name": "stop_words", "shape": [1, 2], "datatype": "BYTES", "data": ROUND_TRIP_STOPS},
        {"name": "apply_chat_template", "shape": [1, 1], "datatype": "BOOL", "data": [False]},
    ]}
    req = urllib.request.Request(f"{http_url}/v2/models/preprocessing/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            answer = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"start-up check: preprocessing answered {e.code}: {e.read().decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(f"start-up check: no answer from preprocessing ({e})") from None
    outputs = {o["name"]: o.get("data") for o in answer.get("outputs", [])}
    want_ids = list(tokenizer.encode(text))
    problems = []
    if outputs.get("input_ids") != want_ids:
        problems.append(f"input_ids {outputs.get('input_ids')} != the tokenizer's {want_ids}")
    try:
        params = json.loads((outputs.get("sampling_parameters") or [""])[0])["params"]
        if params.get("max_tokens") != 3 or params.get("stop") != ROUND_TRIP_STOPS:
            problems.append(f"sampling_parameters {params} lost max_tokens=3 or stop={ROUND_TRIP_STOPS}")
    except (ValueError, KeyError, TypeError, IndexError) as e:
        problems.append(f"sampling_parameters unreadable ({e}): {outputs.get('sampling_parameters')!r}")
    if problems:
        raise RuntimeError("start-up check: the preprocessing stub corrupted a known request: " + "; ".join(problems))


@dataclass(slots=True)
class Stub:
    model: str            # model name (the folder of its model.py)
    instance: str         # Triton's instance name, e.g. preprocessing_0_0
    proc: psutil.Process


def find_stubs(server_pid: int) -> list[Stub]:
    """The live Python-backend stubs that tritonserver ``server_pid`` started."""
    stubs = []
    for child in psutil.Process(server_pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE or not child.name().startswith(STUB[:15]):
                continue
            args = child.cmdline()
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        model_py = next((Path(a) for a in args[1:] if a.endswith("model.py")), None)
        if model_py is None:
            continue
        model = model_py.parent.parent.name
        instance = next((a for a in args if re.fullmatch(rf"{re.escape(model)}_\d+_\d+", a)), model)
        stubs.append(Stub(model, instance, child))
    return stubs


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class StubWatcher:
    """Polls the stubs of a ready tritonserver. ``poll()`` -> an error message when a needed one died.

    The stubs are read once, when the server is ready; every Python model of ``repository`` must have
    one then. ``log_path`` is tritonserver's log: the stub's last error is read from the part written
    after that moment.
    """

    def __init__(self, server_pid: int, repository: Path, log_path: Path):
        self.log_path = Path(log_path)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.stubs = find_stubs(server_pid)
        python_models = sorted(p.parent.parent.name for p in Path(repository).glob("*/1/model.py"))
        self.missing = [m for m in python_models if m not in {s.model for s in self.stubs}]
        self.reported: set[str] = set()

    def check(self) -> bool:
        """Log new warnings and a fatal error; True when the server must stop."""
        fatal, warnings = self.poll()
        for w in warnings:
            log.warning(w)
        if fatal:
            log.error(fatal)
        return fatal is not None

    def poll(self) -> tuple[str | None, list[str]]:
        """(fatal message or None, warnings not reported before)."""
        warnings = []
        for model in self.missing:
            if model not in OPTIONAL_MODELS:
                return f"model {model!r} has no stub process (it died before the server was ready?)" + \
                       self.log_excerpt(model), []
        for stub in self.stubs:
            if _alive(stub.proc) or stub.instance in self.reported:
                continue
            self.reported.add(stub.instance)
            message = (f"the stub process of model instance {stub.instance!r} (pid {stub.proc.pid}) died; "
                       f"Triton 2.51 cannot restart it")
            if stub.model in OPTIONAL_MODELS:
                warnings.append(message + "; the target serves autoregressively (no speculation) until a draft "
                                "worker joins its rendezvous or the server restarts" + self.log_excerpt(stub.instance))
                continue
            return message + " (model control mode none), so every request to it would fail: stopping" + \
                self.log_excerpt(stub.instance), warnings
        return None, warnings

    def log_excerpt(self, instance: str, lines: int = 12) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        hits = [line for line in text.splitlines() if instance in line or _STUB_DEATH.search(line)]
        if not hits:
            return ("\n  the server log has no error from it since start-up (killed from outside? "
                    "e.g. the OOM killer or a signal)")
        return "\n  its last error lines in the server log:\n    " + "\n    ".join(hits[-lines:])
