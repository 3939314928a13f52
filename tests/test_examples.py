"""The examples do what they say."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from apps import UNANSWERED
from communicator import communicate, http_scope

pytestmark = pytest.mark.anyio

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))


FRAMEWORKS = ["starlette_app", "fastapi_app", "litestar_app", "quart_app", "falcon_app"]


@pytest.mark.parametrize("module", FRAMEWORKS)
async def test_a_slow_endpoint_is_cancelled_when_the_client_leaves(
    module: str, anyio_backend: str
) -> None:
    if anyio_backend == "trio" and module in ("quart_app", "falcon_app"):
        pytest.skip("asyncio only")
    app = __import__(module).app
    scope = http_scope(method="GET", path="/report", query_string=b"seconds=30")
    async with communicate(app, scope) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert c.error is None
    assert c.sent == UNANSWERED


@pytest.mark.parametrize("module", FRAMEWORKS)
async def test_a_client_that_stays_gets_its_response(module: str, anyio_backend: str) -> None:
    if anyio_backend == "trio" and module in ("quart_app", "falcon_app"):
        pytest.skip("asyncio only")
    app = __import__(module).app
    scope = http_scope(method="GET", path="/report", query_string=b"seconds=0.01")
    async with communicate(app, scope) as c:
        await c.send_body(b"")
        while (await c.receive_output()).get("more_body", False) or len(c.sent) < 2:
            pass
        # As uvicorn does once the response is complete. Quart (0.23) waits for it.
        await c.disconnect()
        await c.wait()
    assert c.sent[0]["status"] == 200
    assert json.loads(b"".join(m.get("body", b"") for m in c.sent[1:])) == {"report": "ready"}


async def test_a_sync_fastapi_endpoint_stops_at_its_next_check() -> None:
    from fastapi_app import app

    scope = http_scope(method="GET", path="/export", query_string=b"rows=1000")
    async with communicate(app, scope) as c:
        await c.send_body(b"")
        await anyio.sleep(0.1)
        await c.disconnect()
        await c.wait()
    assert c.error is None


async def test_the_raw_example_is_cancelled_when_the_client_leaves() -> None:
    from raw_app import app

    async with communicate(app, http_scope(method="GET", path="/")) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()  # long before the three seconds of work
    assert c.sent == UNANSWERED


# Run in its own process: a process holds one Django settings module, and the tests hold theirs.
DJANGO_CHECK = """
import asyncio, time
from asgiref.testing import ApplicationCommunicator
from mysite.asgi import application

def scope(path, query):
    return {"type": "http", "method": "GET", "path": path, "query_string": query,
            "headers": [(b"host", b"localhost")], "http_version": "1.1"}

async def main():
    c = ApplicationCommunicator(application, scope("/report", b"seconds=30"))
    await c.send_input({"type": "http.request"})
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await c.send_input({"type": "http.disconnect"})
    await c.wait(10)
    assert time.monotonic() - started < 10
    c = ApplicationCommunicator(application, scope("/report", b"seconds=0.01"))
    await c.send_input({"type": "http.request"})
    assert (await c.receive_output(5))["status"] == 200
    assert (await c.receive_output(5))["body"] == b"report ready"
    print("ok")

asyncio.run(main())
"""


def test_the_django_project_is_cancelled_when_the_client_leaves() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", DJANGO_CHECK],
        cwd=Path(__file__).parent.parent / "examples" / "django_project",
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "mysite.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "ok", result.stderr


async def test_prometheus_counts_abandoned_requests_by_route_and_the_work_saved() -> None:
    import prometheus_metrics
    from prometheus_client import CONTENT_TYPE_LATEST

    app = prometheus_metrics.app
    completed = http_scope(method="GET", path="/reports/1", query_string=b"seconds=0.2")
    async with communicate(app, completed) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.sent[0]["status"] == 200
    abandoned = http_scope(method="GET", path="/reports/2", query_string=b"seconds=30")
    async with communicate(app, abandoned) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    # Where the docstring says, with no redirect.
    async with communicate(app, http_scope(method="GET", path="/metrics")) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.sent[0]["status"] == 200
    assert (b"content-type", CONTENT_TYPE_LATEST.encode()) in c.sent[0]["headers"]
    text = b"".join(m.get("body", b"") for m in c.sent[1:]).decode()
    metrics = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    route = 'route="/reports/{report_id}"'
    labels = f'cause="client_left",phase="working",{route}'
    assert metrics[f"http_requests_abandoned_total{{{labels}}}"] == 1
    # What the completed request took (0.2 s and more), less what the abandoned one had run.
    took, _ = prometheus_metrics.completed["/reports/{report_id}"]
    assert 0 < metrics[f"http_request_work_saved_seconds_total{{{route}}}"] < took - 0.05
    prometheus_metrics.ABANDONED.clear()
    prometheus_metrics.SAVED.clear()
    prometheus_metrics.completed.clear()


async def test_the_opentelemetry_example_records_a_client_that_left_in_its_span(
    anyio_backend: str,
) -> None:
    pytest.importorskip("opentelemetry.instrumentation.asgi")
    import opentelemetry_tracing
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    opentelemetry_tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    scope = http_scope(method="GET", path="/report", query_string=b"seconds=30")
    async with communicate(opentelemetry_tracing.app, scope) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert [event.name for event in span.events] == ["asgi_disconnect.stopped"]
    assert span.attributes is not None and span.attributes["error.type"] == "client_left"
