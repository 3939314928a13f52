"""What the middleware logs: every record with its fields as attributes, no configuration of
its own, and the snippets of docs/observability.md that make the lines visible under uvicorn,
gunicorn and Django."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from apps import Record, read_body, respond, slow_app
from communicator import communicate, http_scope
from servers import HOST, free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_disconnect import Disconnect, DisconnectMiddleware, Receive, Scope, Send

pytestmark = pytest.mark.anyio

FIELDS = ("method", "path", "route", "phase", "cause", "elapsed")


class ServerError(Exception):
    pass


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS}


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "asgi_disconnect"]


async def test_a_client_that_left_is_logged_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(DisconnectMiddleware(slow_app(Record())), http_scope()) as c:
            await c.send_body(b"")
            await anyio.sleep(0.05)
            await c.disconnect()
    (record,) = ours(caplog)
    assert record.levelno == logging.INFO
    found = fields(record)
    assert 0.04 <= found.pop("elapsed") < 10  # seconds: about the 0.05 s the app worked
    assert found == {
        "method": "POST",
        "path": "/",
        "route": None,
        "phase": "working",
        "cause": "client_left",
    }


async def test_a_deadline_is_logged_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(DisconnectMiddleware(slow_app(Record()), timeout=0.05)) as c:
            await c.send_body(b"")
    (record,) = ours(caplog)
    assert record.levelno == logging.WARNING
    assert (record.phase, record.cause) == ("working", "deadline")  # type: ignore[attr-defined]
    assert record.elapsed >= 0.04  # type: ignore[attr-defined]


async def test_a_request_queued_past_its_deadline_is_logged_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stamp = b"t=%d" % round((time.time() - 5) * 1000)
    scope = http_scope(method="GET", path="/r", headers=[(b"x-request-start", stamp)])
    middleware = DisconnectMiddleware(
        slow_app(Record()), timeout=2, request_start_header="x-request-start"
    )
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(middleware, scope):
            pass
    (record,) = ours(caplog)
    assert fields(record) == {
        "method": "GET",
        "path": "/r",
        "route": None,
        "phase": "queued",
        "cause": "deadline",
        "elapsed": 0.0,
    }


async def test_a_failing_on_disconnect_is_logged_with_the_requests_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def report(disconnect: Disconnect) -> None:
        raise RuntimeError("metrics are down")

    middleware = DisconnectMiddleware(slow_app(Record()), on_disconnect=report)
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(middleware) as c:
            await c.send_body(b"")
            await c.disconnect()
    info, error = ours(caplog)
    assert error.levelno == logging.ERROR and error.getMessage() == "on_disconnect raised"
    assert fields(error) == fields(info)
    assert error.cause == "client_left"  # type: ignore[attr-defined]


async def test_a_server_error_is_logged_with_the_requests_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, Record())
        await anyio.sleep(0.05)
        await respond(send)

    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(DisconnectMiddleware(app), http_scope(path="/upload")) as c:
            await c.send_body(b"")
            await c.send_input(ServerError("lost"))
    (record,) = ours(caplog)
    assert record.levelno == logging.ERROR
    assert fields(record) == {
        "method": "POST",
        "path": "/upload",
        "route": None,
        "phase": None,
        "cause": None,
        "elapsed": None,
    }


async def test_the_route_is_starlettes_template(caplog: pytest.LogCaptureFixture) -> None:
    async def report(request: Request) -> PlainTextResponse:
        await anyio.sleep(30)
        raise AssertionError("cancelled before")  # pragma: no cover

    app = Starlette(routes=[Route("/reports/{report_id}", report)])
    scope = http_scope(method="GET", path="/reports/7", raw_path=b"/reports/7")
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(DisconnectMiddleware(app), scope) as c:
            await c.send_body(b"")
            await anyio.sleep(0.05)
            await c.disconnect()
    (record,) = ours(caplog)
    assert (record.path, record.route) == ("/reports/7", "/reports/{report_id}")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "use",
    [
        lambda: DisconnectMiddleware(slow_app(Record())),
        lambda: DisconnectMiddleware(slow_app(Record()), timeout=1, exclude_paths=["/health"]),
    ],
)
def test_the_library_configures_no_logging(use: Callable[[], object]) -> None:
    # Library etiquette: no handler, no level, no change to propagation; what the
    # application configures decides what is shown.
    root_handlers = list(logging.getLogger().handlers)
    use()
    logger = logging.getLogger("asgi_disconnect")
    assert logger.handlers == []
    assert logger.level == logging.NOTSET
    assert logger.propagate
    assert logging.getLogger().handlers == root_handlers


# -- the docs' snippets -----------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "observability.md"
EXAMPLES = ROOT / "examples"
# The line for a client that left the raw ASGI example (which works 3 s) after about 0.3 s.
LEFT = re.compile(
    r"GET /report: client disconnected while working, 0\.[2-9]\d\d s into the request"
)

needs_guide = pytest.mark.skipif(not GUIDE.is_file(), reason="the docs are not beside the tests")


def snippet(language: str, first_line: str = "") -> str:
    """The code block of the guide's "Seeing it in the logs" whose first line is given."""
    text = GUIDE.read_text()
    section = text[text.index("## Seeing it in the logs") :]
    for block in re.findall(rf"```{language}\n(.*?)```", section, flags=re.S):
        if block.startswith(first_line):
            return str(block)
    raise AssertionError(f"no {language} block starting {first_line!r}")  # pragma: no cover


@needs_guide
def test_the_django_logging_settings_show_the_line_with_its_fields(tmp_path: Path) -> None:
    # Django applies LOGGING with dictConfig at django.setup(), in a process of its own here,
    # as in the server's.
    program = tmp_path / "serve.py"
    program.write_text(
        snippet("python", "# settings.py")
        + textwrap.dedent(
            """
            import anyio
            import django
            from django.conf import settings

            from asgi_disconnect import DisconnectMiddleware

            settings.configure(LOGGING=LOGGING)
            django.setup()


            async def app(scope, receive, send):
                await receive()
                await anyio.sleep(30)


            messages = [{"type": "http.request", "body": b""}]


            async def receive():
                if messages:
                    return messages.pop()
                await anyio.sleep(0.3)
                return {"type": "http.disconnect"}


            async def send(message):
                pass  # the 499 the middleware ends an abandoned request with


            scope = {"type": "http", "method": "GET", "path": "/report", "headers": []}
            anyio.run(DisconnectMiddleware(app), scope, receive, send)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(program)], capture_output=True, text=True, timeout=60, check=True
    )
    (line,) = done.stderr.splitlines()
    assert line.startswith("INFO asgi_disconnect: GET /report: client disconnected"), line
    assert LEFT.search(line), line
    assert line.endswith(" s into the request (phase=working, cause=client_left)"), line


@contextmanager
def serving(command: list[str], log: Path, ready: str) -> Iterator[int]:
    """Run a server on the raw ASGI example; yield its port once it has logged ``ready``."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [part.format(port=port) for part in command],
            cwd=EXAMPLES,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            # Listening is not enough: gunicorn's master listens before its worker serves.
            if ready in log.read_text(errors="replace"):
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def leave_after(port: int, seconds: float) -> None:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"GET /report HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(seconds)


def logged(log: Path, pattern: re.Pattern[str]) -> str:
    deadline = time.monotonic() + 10
    while True:
        for line in log.read_text(errors="replace").splitlines():
            if pattern.search(line):
                return line
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@needs_guide
@pytest.mark.servers
def test_the_uvicorn_log_config_shows_the_line(tmp_path: Path) -> None:
    config = tmp_path / "logging.json"
    config.write_text(snippet("json"))
    json.loads(config.read_text())
    command = [
        sys.executable, "-m", "uvicorn", "--host", HOST, "--port", "{port}",
        "--log-config", str(config), "raw_app:app",
    ]  # fmt: skip
    log = tmp_path / "uvicorn.log"
    with serving(command, log, "Uvicorn running on") as port:
        leave_after(port, 0.3)
        line = logged(log, LEFT)
    # The format the file gives: time, level, logger.
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO asgi_disconnect: ", line), line
    # uvicorn's own lines go on, through the same handler.
    assert re.search(r"INFO uvicorn.error: Uvicorn running on", log.read_text())


@needs_guide
@pytest.mark.servers
def test_the_gunicorn_log_config_shows_the_line(tmp_path: Path) -> None:
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(snippet("python", "# gunicorn.conf.py"))
    command = [
        sys.executable, "-m", "gunicorn", "-k", "asgi", "-c", str(config),
        "--bind", f"{HOST}:{{port}}", "--workers", "1", "raw_app:app",
    ]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with serving(command, log, "ASGI server listening on") as port:
        leave_after(port, 0.3)
        line = logged(log, LEFT)
    # gunicorn's own format, as its error log prints it.
    timestamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\]"
    assert re.match(rf"{timestamp} \[\d+\] \[INFO\] GET ", line), line
    # gunicorn's own lines are printed once each, as without the snippet.
    booting = [line for line in log.read_text().splitlines() if "Booting worker" in line]
    assert len(booting) == 1, log.read_text()
