"""Triton deployment tests (tests/triton_deploy; not named "triton", which would shadow the triton package): client/ on sys.path, and the tail of the server log added to every failure report."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from triton_helpers import servers  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and servers:
        for server in servers:
            report.sections.append((f"tritonserver log ({server.log_path})", server.log_tail(80)))


