from __future__ import annotations

import statistics
import sys

import portable
import pytest
import watching
from backends import ALL

WATCHING_AT_ONCE = watching.from_environment()
PORTABLE = portable.from_environment()

# The peers' plugins and launcher (run by test_peer_suites.py inside the peers' own runs).
collect_ignore = ["peers"]


@pytest.fixture(params=ALL)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


def pytest_report_header() -> list[str]:
    header = ["watchers: started at once"] if WATCHING_AT_ONCE else []
    return header + (["asyncio: the portable path"] if PORTABLE else [])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for report in getattr(sys.modules.get("soak"), "REPORTS", []):
        terminalreporter.section("soak against uvicorn")
        for line in report.lines():
            terminalreporter.line(line)
    figures = [
        ("servers", "client's close to the handler's cancellation (ms)"),
        ("test_deadline_servers", "a request's deadline to its client having the 504 (ms)"),
        ("test_django_statements", "client's close to its statement gone from PostgreSQL (ms)"),
    ]
    for module, title in figures:
        latencies: dict[str, list[float]] = getattr(sys.modules.get(module), "LATENCIES", {})
        if latencies:
            terminalreporter.section(title)
        for name, values in latencies.items():
            ms = sorted(value * 1000 for value in values)
            terminalreporter.line(
                f"{name:20} n={len(ms):3}  median {statistics.median(ms):6.2f}  max {ms[-1]:6.2f}"
            )
