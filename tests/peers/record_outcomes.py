"""A pytest plugin that writes each test's outcome to ``$ASGI_DISCONNECT_PEERS_OUTCOMES``.

Loaded with ``-p record_outcomes`` into a peer's own test run, bare or wrapped, so that the
runs can be compared test by test rather than by their summary lines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ENVIRONMENT = "ASGI_DISCONNECT_PEERS_OUTCOMES"

#: nodeid -> {"outcome": passed|failed|skipped|xfailed|xpassed|error, "detail": excerpt}
OUTCOMES: dict[str, dict[str, str]] = {}


def _excerpt(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The end of the failure's traceback: where the assertion or the exception is."""
    lines = report.longreprtext.splitlines()
    return "\n".join(lines[-40:])


def _record(nodeid: str, outcome: str, report: pytest.TestReport | pytest.CollectReport) -> None:
    detail = _excerpt(report) if outcome in {"failed", "error"} else ""
    OUTCOMES[nodeid] = {"outcome": outcome, "detail": detail}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    xfail = hasattr(report, "wasxfail")
    if report.when == "setup" and report.failed:
        _record(report.nodeid, "error", report)
    elif report.when == "call" and report.failed:
        _record(report.nodeid, "failed", report)
    elif report.when == "call" and report.passed:
        _record(report.nodeid, "xpassed" if xfail else "passed", report)
    elif report.when in {"setup", "call"} and report.skipped:
        _record(report.nodeid, "xfailed" if xfail else "skipped", report)
    elif report.when == "teardown" and report.failed:
        _record(report.nodeid, "error", report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _record(report.nodeid, "error", report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller writes
        return
    path = os.environ.get(ENVIRONMENT)
    if path:
        Path(path).write_text(json.dumps(OUTCOMES, indent=1, sort_keys=True))
