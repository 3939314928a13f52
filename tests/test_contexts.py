"""Everything the middleware runs for a request runs in that request's own context.

Tracing, logging and error reporting (OpenTelemetry, structlog, Sentry) keep per-request state
in ``contextvars``. The server's ``receive()``, which the middleware's watcher calls, must see
the request's own, and nothing of a finished request may stay reachable from a later one.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import anyio
import pytest
from apps import respond
from backends import ALL
from communicator import Communicator, communicate, http_scope
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import ASGIApp, Receive, Scope, Send

pytestmark = pytest.mark.anyio

# uvloop too: its timers take a context of their own, as asyncio's do.
BACKENDS = [*ALL, pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]

REQUEST: ContextVar[Any] = ContextVar("request")


def tracing(app: ASGIApp, seen: list[tuple[str, object]]) -> ASGIApp:
    """A middleware outside ours that keeps the request in a context variable."""

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        REQUEST.set(scope["path"])

        async def receive_in_context() -> Any:
            seen.append((scope["path"], REQUEST.get(None)))
            return await receive()

        await app(scope, receive_in_context, send)

    return traced


def noting_receives(app: ASGIApp) -> ASGIApp:
    """Tells the app, through its scope, once the server's receive() has been called."""

    async def noting(scope: Scope, receive: Receive, send: Send) -> None:
        called = scope["receive called"] = anyio.Event()

        async def receive_noted() -> Any:
            called.set()
            return await receive()

        await app(scope, receive_noted, send)

    return noting


async def slow(scope: Scope, receive: Receive, send: Send) -> None:
    # Never reads: the middleware's watcher calls the server's receive() for it, once the
    # request has outlived a tick.
    await scope["receive called"].wait()
    await respond(send)


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_the_servers_receive_runs_in_its_own_requests_context() -> None:
    seen: list[tuple[str, object]] = []
    app = tracing(noting_receives(DisconnectMiddleware(slow)), seen)

    async def one(index: int) -> None:
        async with communicate(app, http_scope(path=f"/{index}")) as c:
            await c.send_body(b"")

    async with anyio.create_task_group() as tg:  # all start within one tick
        for index in range(20):
            tg.start_soon(one, index)
    assert len(seen) >= 20
    assert [path for path, request in seen if request != path] == []


class Span:
    """Stands for what a request keeps in its context: a span, a logger's bindings."""


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_nothing_of_a_finished_request_stays_reachable_from_a_later_one() -> None:
    held: list[weakref.ref[Span]] = []
    running = {"/first": anyio.Event(), "/second": anyio.Event()}
    finish = {"/first": anyio.Event(), "/second": anyio.Event()}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        running[scope["path"]].set()
        await finish[scope["path"]].wait()
        await respond(send)

    middleware = DisconnectMiddleware(app)  # one middleware: one ticker for both requests

    async def keeping(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/first":
            span = Span()
            held.append(weakref.ref(span))
            REQUEST.set(span)
            del span
        await middleware(scope, receive, send)

    first = Communicator(keeping, http_scope(path="/first"))
    second = Communicator(keeping, http_scope(path="/second"))
    with collector_off():
        async with anyio.create_task_group() as tg:
            tg.start_soon(first._run)  # arms the ticker
            await first.send_body(b"")
            await running["/first"].wait()
            tg.start_soon(second._run)
            await second.send_body(b"")
            await running["/second"].wait()
            finish["/first"].set()
            await first.wait()
            # Ticks pass while the second request runs on alone; a busy machine may need more.
            with anyio.move_on_after(2):
                while held[0]() is not None:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            alive = held[0]() is not None
            finish["/second"].set()
        first.close()
        second.close()
    assert not alive


@contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- OpenTelemetry's own ASGI middleware, outside ours ------------------------------------


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_each_requests_spans_are_in_its_own_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    app = OpenTelemetryMiddleware(
        noting_receives(DisconnectMiddleware(slow)), tracer_provider=provider
    )

    async def one(index: int) -> None:
        async with communicate(app, http_scope(method="GET", path=f"/{index}")) as c:
            await c.send_body(b"")

    async with anyio.create_task_group() as tg:  # all start within one tick
        for index in range(20):
            tg.start_soon(one, index)
    traces: dict[int, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        assert span.context is not None
        traces.setdefault(span.context.trace_id, []).append(span)
    assert len(traces) == 20
    for trace in traces.values():
        # OpenTelemetry names a request's spans after it: "GET /3", "GET /3 http receive".
        assert len({span.name.split(" http ")[0] for span in trace}) == 1, trace
        assert any(span.name.endswith(" http receive") for span in trace)  # the watcher's receive()
