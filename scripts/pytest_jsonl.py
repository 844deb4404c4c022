"""A pytest plugin for ``scripts/gpu_bench.sh``: one JSON line per finished test, appended as it finishes.

    BEN_GPU_BENCH_RESULTS=out.jsonl BEN_GPU_BENCH_STEP=pytest-gpu PYTHONPATH=scripts python3 -m pytest -p pytest_jsonl

Lines: ``{"step", "what": "test", "nodeid", "when", "outcome", "seconds", "message"}`` for each test's
call (and for a setup or teardown that did not pass: skips, errors), ``"collect-error"`` for a module
that failed to import, and ``"session"`` at the end with pytest's exit status and counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _emit(what: str, **fields: Any) -> None:
    path = os.environ.get("BEN_GPU_BENCH_RESULTS")
    if not path:
        return
    line = {"step": os.environ.get("BEN_GPU_BENCH_STEP", "pytest"), "what": what, **fields}
    with Path(path).open("a") as f:
        f.write(json.dumps(line, default=str) + "\n")


def _message(report: Any) -> str | None:
    if report.passed:
        return None
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])[:300]
    return str(report.longreprtext).strip().splitlines()[-1][:300] if report.longreprtext else None


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call" or not report.passed:
        _emit("test", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
              seconds=round(report.duration, 3), message=_message(report))


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _emit("collect-error", nodeid=report.nodeid, message=_message(report))


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    _emit("session", exitstatus=int(exitstatus), collected=session.testscollected, failed=session.testsfailed)
