"""A client that leaves before the response is complete stops the app, quietly."""

from __future__ import annotations

import logging
import sys
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from apps import UNANSWERED, Record, read_body, respond, slow_app
from backends import ASYNCIO
from communicator import Communicator, communicate, http_scope

from asgi_disconnect import (
    Disconnect,
    DisconnectMiddleware,
    Phase,
    is_disconnected,
    wait_disconnected,
)
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("sticky", [True, False], ids=["repeats-disconnect", "disconnect-once"])
@pytest.mark.parametrize("read", [True, False], ids=["app-reads-body", "app-ignores-body"])
async def test_disconnect_while_working_cancels_the_app(sticky: bool, read: bool) -> None:
    record = Record()
    async with communicate(DisconnectMiddleware(slow_app(record, read=read)), sticky=sticky) as c:
        await c.send_body(b"small body")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert record.events[-1:] == ["cancelled"]
    assert c.returned  # quietly: the server sees a normal return
    assert c.sent == UNANSWERED


async def test_disconnect_while_streaming_cancels_the_generator() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for index in range(1000):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                record.events.append(f"chunk {index}")
                await anyio.sleep(0.01)
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled")
            raise

    disconnects: list[Disconnect] = []
    async with communicate(DisconnectMiddleware(app, on_disconnect=disconnects.append)) as c:
        await c.send_body(b"")
        assert (await c.receive_output())["type"] == "http.response.start"
        await c.receive_output()
        await c.disconnect()
        await c.wait()
    assert record.events[-1] == "cancelled"
    assert len(record.events) < 100
    assert [d.phase for d in disconnects] == [Phase.STREAMING]


@pytest.mark.parametrize(
    ("body_chunks", "respond_first", "phase"),
    [
        ((b"part", b"rest"), False, Phase.BODY),
        ((b"all",), False, Phase.WORKING),
        ((b"all",), True, Phase.STREAMING),
    ],
)
async def test_on_disconnect_and_log_line_report_the_phase(
    body_chunks: tuple[bytes, ...],
    respond_first: bool,
    phase: Phase,
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if respond_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        record.started.set()
        await anyio.sleep(30)

    reports: list[Disconnect] = []

    async def on_disconnect(disconnect: Disconnect) -> None:
        await anyio.lowlevel.checkpoint()
        reports.append(disconnect)

    caplog.set_level(logging.INFO, logger="asgi_disconnect")
    middleware = DisconnectMiddleware(app, on_disconnect=on_disconnect)
    async with communicate(middleware) as c:
        await c.send_input({"type": "http.request", "body": body_chunks[0], "more_body": True})
        if len(body_chunks) > 1:
            await record.started.wait()
        else:
            await c.send_input({"type": "http.request", "body": b"", "more_body": False})
            await record.started.wait()
        await anyio.sleep(0.01)
        await c.disconnect()
        await c.wait()
    assert len(reports) == 1
    assert reports[0].phase is phase
    assert reports[0].scope["path"] == "/"
    assert reports[0].elapsed >= 0
    lines = [r for r in caplog.records if r.name == "asgi_disconnect"]
    assert len(lines) == 1
    assert "POST /" in lines[0].getMessage()
    assert lines[0].levelno == logging.INFO


async def test_on_disconnect_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def on_disconnect(disconnect: Disconnect) -> None:
        raise RuntimeError("callback bug")

    record = Record()
    async with communicate(
        DisconnectMiddleware(slow_app(record), on_disconnect=on_disconnect)
    ) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert c.returned
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].exc_info is not None
    assert "callback bug" in str(errors[0].exc_info[1])


async def test_grace_period_lets_a_told_app_finish_on_its_own() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        record.started.set()
        for _ in range(3000):
            if is_disconnected(scope):
                record.events.append("noticed")
                await anyio.sleep(0.01)  # clean-up that awaits is not interrupted
                record.events.append("cleaned up")
                return
            await anyio.sleep(0.001)

    async with communicate(DisconnectMiddleware(app, grace_period=5)) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert record.events == ["noticed", "cleaned up"]


async def test_grace_period_then_cancels_an_app_that_keeps_going() -> None:
    record = Record()
    async with communicate(DisconnectMiddleware(slow_app(record), grace_period=0.2)) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        left_at = anyio.current_time()
        await c.wait()
        stopped_after = anyio.current_time() - left_at
    assert record.events == ["cancelled"]
    assert stopped_after >= 0.2


async def test_pending_and_later_receives_report_the_latched_disconnect() -> None:
    results: list[str] = []
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)

        async def listen() -> None:
            results.append((await receive())["type"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            tg.start_soon(listen)
        # Told twice; later calls too, though the server said it only once.
        results.append((await receive())["type"])
        results.append((await receive())["type"])

    async with communicate(DisconnectMiddleware(app), sticky=False) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert results == ["http.disconnect"] * 4
    assert c.reads == 2  # one reader: the server heard one receive() per message


async def test_an_app_that_listens_stops_itself_and_finishes_its_clean_up() -> None:
    # The shape of Django >= 5's handler: a listener task and a worker task; when the
    # listener hears the disconnect the handler cancels the worker and cleans up.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        async with anyio.create_task_group() as tg:

            async def listen() -> None:
                message = await receive()
                record.events.append(message["type"])
                tg.cancel_scope.cancel()

            async def work() -> None:
                try:
                    await anyio.sleep(30)
                except anyio.get_cancelled_exc_class():
                    record.events.append("view cancelled")
                    raise

            tg.start_soon(listen)
            tg.start_soon(work)
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.02)
        await anyio.sleep(0.02)  # not shielded: an outside cancellation would stop it here
        record.events.append("request_finished")

    reports: list[Disconnect] = []
    async with communicate(DisconnectMiddleware(app, on_disconnect=reports.append)) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert sorted(record.events) == ["http.disconnect", "request_finished", "view cancelled"]
    assert [r.phase for r in reports] == [Phase.WORKING]


async def test_cancellation_from_outside_propagates() -> None:
    record = Record()
    c = Communicator(DisconnectMiddleware(slow_app(record)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(c._run)
        await c.send_body(b"")
        await record.started.wait()
        tg.cancel_scope.cancel()
    c.close()
    assert isinstance(c.error, anyio.get_cancelled_exc_class())
    assert not c.returned
    assert record.events == ["cancelled"]


@pytest.mark.parametrize("spec_version", ["2.4", "2.3"])
async def test_a_server_send_raising_oserror_means_the_client_left(spec_version: str) -> None:
    # ASGI 2.4 says send() raises OSError once the client has gone. A server of an older
    # spec takes it as a no-op: what one raises all the same is not the spec's word, and
    # reaches the app, then the server, as it would without the middleware.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(100):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await anyio.sleep(0.01)
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled")
            raise
        except OSError:
            record.events.append("OSError")
            raise

    scope = http_scope(asgi={"version": "3.0", "spec_version": spec_version})
    middleware = DisconnectMiddleware(app)
    async with communicate(middleware, scope, sticky=False, send_raises=True) as c:
        await c.send_body(b"")
        await c.receive_output()
        c.disconnected = True  # the socket is gone; the server has not said so through receive()
        await c.wait()
    if spec_version == "2.4":
        assert record.events == ["cancelled"]
        assert c.returned
    else:
        assert record.events == ["OSError"]
        assert isinstance(c.error, ConnectionResetError)  # the server's, unchanged


async def test_sends_after_the_client_left_are_dropped() -> None:
    sent_after: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
        await respond(send)
        sent_after.append("tried")

    async with communicate(DisconnectMiddleware(app, grace_period=5)) as c:
        await c.send_body(b"")
        await c.disconnect()
        await c.wait()
    assert sent_after == ["tried"]
    assert c.sent == UNANSWERED  # the app's own response went nowhere


async def test_a_send_that_fails_after_the_disconnect_was_heard_is_no_second_disconnect() -> None:
    record = Record()
    reports: list[Disconnect] = []
    in_send = anyio.Event()
    release = anyio.Event()

    error = BrokenPipeError("the client has gone")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        try:
            try:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            except OSError as exc:
                record.events.append("told by send()" if exc is error else "?")
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled")
            raise

    async def server_send(message: Any) -> None:
        in_send.set()
        await release.wait()  # a slow socket; meanwhile the watcher hears the disconnect
        raise error

    middleware = DisconnectMiddleware(app, on_disconnect=reports.append, grace_period=0.3)
    async with communicate(middleware, send=server_send) as c:
        await c.send_body(b"")
        await in_send.wait()
        await c.disconnect()
        await anyio.sleep(0.05)
        release.set()
        await c.wait()
    assert record.events == ["told by send()", "cancelled"]
    assert len(reports) == 1


@pytest.mark.parametrize(
    ("spec_version", "server_raises"),
    [("2.3", False), ("two", False), ("2.4", True), ("2.4", False)],
    ids=["2.3", "not-a-version", "2.4-raises", "2.4-drops"],
)
async def test_an_app_told_of_the_disconnect_hears_from_send_what_its_server_says(
    spec_version: str, server_raises: bool
) -> None:
    # After the client left, servers of ASGI 2.4 raise OSError from send(), or take it as a
    # no-op; older ones take it as a no-op, and the middleware drops it for them. An app told
    # first (a grace period) sees what its server would show it. A version that is not one
    # is taken for the spec's default, 2.0.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await wait_disconnected(scope)
        try:
            await respond(send)
        except OSError:
            record.events.append("OSError")
            raise
        record.events.append("sent")

    scope = http_scope(asgi={"version": "3.0", "spec_version": spec_version})
    middleware = DisconnectMiddleware(app, grace_period=5)
    async with communicate(middleware, scope, send_raises=server_raises) as c:
        await c.send_body(b"")
        await c.disconnect()
        await c.wait()
    if server_raises:
        assert record.events == ["OSError"]
        assert isinstance(c.error, ConnectionResetError)  # the server's, unchanged
        assert c.sent == []
    elif spec_version == "2.4":
        assert record.events == ["sent"]
        assert [m["type"] for m in c.sent] == ["http.response.start", "http.response.body"]
        assert c.sent[0]["status"] == 200  # the server had the app's response, as without us
    else:
        assert record.events == ["sent"]
        assert c.sent == UNANSWERED  # the app's response went nowhere


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_an_app_that_turns_the_cancellation_into_its_own_error_keeps_it() -> None:
    import asyncio

    record = Record()
    hosts: list[asyncio.Task[Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        hosts.append(task)
        record.started.set()
        try:
            await anyio.sleep(30)
        except asyncio.CancelledError:
            raise LookupError("stopped early") from None

    async with communicate(DisconnectMiddleware(app)) as c:
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert isinstance(c.error, LookupError)
    assert str(c.error) == "stopped early"
    if sys.version_info >= (3, 11):
        # The middleware's cancellation was taken back: the server's task is not cancelling.
        assert hosts[0].cancelling() == 0


async def test_a_server_that_raises_on_the_unanswered_response_is_not_an_error() -> None:
    record = Record()
    async with communicate(DisconnectMiddleware(slow_app(record)), send_raises=True) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert c.returned
    assert c.sent == []


async def test_a_response_already_started_is_not_answered_again() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await anyio.sleep(30)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await c.receive_output()
        await c.disconnect()
        await c.wait()
    assert [message["type"] for message in c.sent] == ["http.response.start"]


async def test_on_disconnect_gets_the_scope_the_app_saw_with_what_routing_added() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    record = Record()

    async def item(request: Request) -> Response:
        record.started.set()
        await anyio.sleep(30)
        return Response()  # pragma: no cover

    app = Starlette(routes=[Route("/items/{item_id:int}", item)])
    reports: list[Disconnect] = []
    middleware = DisconnectMiddleware(app, on_disconnect=reports.append)
    async with communicate(middleware, http_scope(method="GET", path="/items/7")) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    (report,) = reports
    assert report.scope["path_params"] == {"item_id": 7}
    assert report.scope["route"].path == "/items/{item_id:int}"
    assert report.scope["endpoint"] is item
    assert is_disconnected(report.scope)


@pytest.mark.parametrize("grace", [0.0, 0.1])
async def test_an_app_that_listens_and_goes_on_is_bounded_by_the_grace_period(
    grace: float,
) -> None:
    # It hears the disconnect itself, and goes on as if it had not: a listener is left to
    # stop itself, and a grace period bounds how long that may take.
    record = Record()
    go_on = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        record.started.set()
        assert (await receive())["type"] == "http.disconnect"
        record.events.append("heard")
        try:
            await go_on.wait()
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled")
            raise
        record.events.append("stopped on its own")

    async with communicate(DisconnectMiddleware(app, grace_period=grace)) as c:
        await c.send_body(b"")
        await record.started.wait()
        await anyio.sleep(0.01)  # it listens
        await c.disconnect()
        if grace:
            await c.wait()  # cancelled once the grace is over
        else:
            await anyio.sleep(0.2)  # nothing cancels it meanwhile
            go_on.set()
            await c.wait()
    assert record.events == ["heard", "cancelled" if grace else "stopped on its own"]
    assert c.returned


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_a_sync_endpoint_answering_after_its_client_left_is_cancelled_quietly(
    spec_version: str,
) -> None:
    # A thread cannot be cancelled: the endpoint answers once it is done, and the response's
    # first send() is where the cancellation lands, whatever the server would say of it.
    import threading

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    started = threading.Event()

    def stops_when_told(request: Request) -> PlainTextResponse:
        started.set()
        for _ in range(500):
            if is_disconnected(request.scope):
                return PlainTextResponse("stopped")
            threading.Event().wait(0.01)
        return PlainTextResponse("ran to its end")  # pragma: no cover

    app = Starlette(routes=[Route("/", stops_when_told)])
    scope = http_scope(method="GET", asgi={"version": "3.0", "spec_version": spec_version})
    async with communicate(DisconnectMiddleware(app), scope) as c:
        await c.send_body(b"")
        await anyio.to_thread.run_sync(started.wait, 5)
        await c.disconnect()
        await c.wait()
    assert c.returned
    assert c.sent == UNANSWERED
