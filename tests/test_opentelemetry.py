"""OpenTelemetry: the span that opentelemetry-instrumentation-asgi opens around the middleware
records a stopped request, with the real SDK; a request whose client stays gets nothing."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from apps import Record, respond, slow_app
from communicator import communicate, http_scope
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    SpanKind,
    StatusCode,
    use_span,
)

from asgi_disconnect import Disconnect, DisconnectMiddleware, Receive, Scope, Send
from asgi_disconnect._exchange import Phase
from asgi_disconnect._otel import record

pytest.importorskip("opentelemetry.instrumentation.asgi")


pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def traced(app: Any, exporter: InMemorySpanExporter) -> Any:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # receive()'s and send()'s own spans aside: the server span is the one to read.
    return OpenTelemetryMiddleware(app, tracer_provider=provider, exclude_spans=["receive", "send"])


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


async def test_the_span_of_a_request_whose_client_left_records_it(
    anyio_backend: object, exporter: InMemorySpanExporter
) -> None:
    app = traced(DisconnectMiddleware(slow_app(Record())), exporter)
    async with communicate(app, http_scope()) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
    span = server_span(exporter)
    (event,) = span.events
    assert event.name == "asgi_disconnect.stopped"
    attributes = dict(event.attributes or {})
    elapsed = attributes.pop("asgi_disconnect.elapsed")
    assert isinstance(elapsed, float) and elapsed >= 0.04
    assert attributes == {
        "asgi_disconnect.cause": "client_left",
        "asgi_disconnect.phase": "working",
    }
    assert span.attributes is not None
    assert span.attributes["error.type"] == "client_left"
    assert span.status.status_code is StatusCode.UNSET  # nothing went wrong on the server


async def test_the_span_of_a_request_past_its_deadline_records_it_and_its_504(
    anyio_backend: object, exporter: InMemorySpanExporter
) -> None:
    app = traced(DisconnectMiddleware(slow_app(Record()), timeout=0.05), exporter)
    async with communicate(app, http_scope()) as c:
        await c.send_body(b"")
        await c.wait()
    span = server_span(exporter)
    (event,) = span.events
    assert dict(event.attributes or {})["asgi_disconnect.cause"] == "deadline"
    assert span.attributes is not None
    assert span.attributes["http.status_code"] == 504
    assert span.attributes["error.type"] == "deadline"
    assert span.status.status_code is StatusCode.ERROR


async def test_a_stream_cut_at_its_deadline_is_an_error_of_the_span_though_it_began_200(
    anyio_backend: object, exporter: InMemorySpanExporter
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"tick", "more_body": True})
            await anyio.sleep(0.01)

    async with communicate(traced(DisconnectMiddleware(app, timeout=0.05), exporter)) as c:
        await c.send_body(b"")
        await c.wait()
    span = server_span(exporter)
    assert span.attributes is not None
    assert span.attributes["http.status_code"] == 200
    assert span.attributes["error.type"] == "deadline"
    assert span.status.status_code is StatusCode.ERROR
    assert [dict(e.attributes or {})["asgi_disconnect.phase"] for e in span.events] == ["streaming"]


class FailingSpan(NonRecordingSpan):
    """A span of an OpenTelemetry implementation that fails to record an event."""

    def is_recording(self) -> bool:
        return True

    def add_event(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("the span failed")


async def test_a_span_that_fails_to_record_is_logged_and_takes_nothing_s_place(
    anyio_backend: object, caplog: pytest.LogCaptureFixture
) -> None:
    def under_a_failing_span(app: Any) -> Any:
        async def traced_app(scope: Scope, receive: Receive, send: Send) -> None:
            with use_span(FailingSpan(INVALID_SPAN_CONTEXT), end_on_exit=False):
                await app(scope, receive, send)

        return traced_app

    async def raising(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            await anyio.sleep(30)
        finally:
            raise ValueError("the app's own")

    reports: list[Disconnect] = []
    middleware = DisconnectMiddleware(slow_app(Record()), on_disconnect=reports.append)
    async with communicate(under_a_failing_span(middleware), http_scope()) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert c.error is None
    assert c.sent[0]["status"] == 499  # the answer for what wraps the middleware
    assert len(reports) == 1
    async with communicate(under_a_failing_span(DisconnectMiddleware(raising))) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert isinstance(c.error, ValueError)
    failures = [r for r in caplog.records if r.getMessage().startswith("recording the stop")]
    assert len(failures) == 2
    assert all(isinstance(r.exc_info and r.exc_info[1], RuntimeError) for r in failures)


async def test_the_span_of_a_request_whose_client_stays_is_what_it_is_bare(
    anyio_backend: object, exporter: InMemorySpanExporter
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await respond(send)

    spans = []
    for wrapped in (app, DisconnectMiddleware(app)):
        exporter.clear()
        async with communicate(traced(wrapped, exporter), http_scope()) as c:
            await c.send_body(b"")
            await c.wait()
        span = server_span(exporter)
        spans.append((span.name, dict(span.attributes or {}), span.events, span.status.status_code))
    assert spans[0] == spans[1]
    assert spans[1][2] == ()


async def test_without_a_recording_span_nothing_is_recorded(anyio_backend: object) -> None:
    # OpenTelemetry imported, no span current (instrumentation inside the middleware, whose
    # span has ended by the time the middleware reports): the report goes on as ever.
    record = Record()
    async with communicate(DisconnectMiddleware(slow_app(record)), http_scope()) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert "cancelled" in record.events


async def test_the_span_of_a_request_queued_past_its_deadline_records_it_and_its_503(
    anyio_backend: object, exporter: InMemorySpanExporter
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("never called")  # pragma: no cover

    middleware = DisconnectMiddleware(app, timeout=1.0, request_start_header="x-request-start")
    stamp = f"t={int((time.time() - 5) * 1_000_000)}".encode()  # a proxy's, 5 s ago
    async with communicate(
        traced(middleware, exporter), http_scope(headers=[(b"x-request-start", stamp)])
    ) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.sent[0]["status"] == 503
    span = server_span(exporter)
    (event,) = span.events
    attributes = dict(event.attributes or {})
    assert attributes["asgi_disconnect.phase"] == "queued"
    assert attributes["asgi_disconnect.cause"] == "deadline"


def test_a_process_that_has_not_imported_opentelemetry_records_nothing(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    disconnect = Disconnect(http_scope(), Phase.WORKING, 0.1)
    with provider.get_tracer(__name__).start_as_current_span("request"):
        record(disconnect)  # OpenTelemetry imported: recorded
        monkeypatch.delitem(sys.modules, "opentelemetry.trace")
        record(disconnect)  # not imported, as far as the middleware can tell: nothing
    (span,) = exporter.get_finished_spans()
    assert [event.name for event in span.events] == ["asgi_disconnect.stopped"]
