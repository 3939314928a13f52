"""A cancellation from outside the middleware always propagates, whatever the order.

Outside: the server cancelling the request's task, ``asyncio.timeout()`` or
``anyio.fail_after()`` around the middleware. The orders: the client leaves first and the
outside cancellation comes during the app's clean-up; both in the same loop iteration, one
order or the other, before the app runs again; the outside cancellation first and the client
leaving during the clean-up.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, Literal

import anyio
import pytest
from apps import Record, read_body
from backends import is_trio
from communicator import http_scope

from asgi_disconnect import DisconnectMiddleware, wait_disconnected
from asgi_disconnect._types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

Kind = Literal["server", "asyncio.timeout", "anyio.fail_after"]
Order = Literal["ours first", "together, theirs first", "together, ours first", "theirs first"]


class Outside:
    """Runs the middleware as a server would, inside what may cancel it from outside."""

    def __init__(self, kind: Kind, backend: object) -> None:
        self.kind = kind
        self.trio = is_trio(backend)
        self.record = Record()
        self.cleaning = anyio.Event()
        self.proceed = anyio.Event()
        self.done = anyio.Event()
        self.outcome = "running"
        self._leave = anyio.Event()
        self._cancel: Callable[[], None] = lambda: None
        self._fire_with_disconnect: str | None = None

    # -- the server's side ---------------------------------------------------------------

    async def receive(self) -> Message:
        if not self.record.received:
            self.record.received.append({})
            return {"type": "http.request", "body": b""}
        await self._leave.wait()
        # In the very step in which the middleware hears the client leave, or in the callback
        # that follows it, before the app runs again.
        if self._fire_with_disconnect == "before":
            self._cancel()
        elif self._fire_with_disconnect == "after":
            soon(self._cancel)
        self._fire_with_disconnect = None
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        pass

    # -- the app ---------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        await read_body(receive, Record())
        self.record.started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            self.record.events.append("cleaning")
            self.cleaning.set()
            with anyio.CancelScope(shield=True):
                await self.proceed.wait()
            raise

    # -- the test's side -------------------------------------------------------------------

    def leave(self, fire_outside_too: str | None = None) -> None:
        self._fire_with_disconnect = fire_outside_too
        self._leave.set()

    def fire(self) -> None:
        self._cancel()

    async def run(self) -> None:
        try:
            self.outcome = await self._serve()
        except TimeoutError:
            self.outcome = "timed out"
        except anyio.get_cancelled_exc_class():
            self.outcome = "cancelled"
            raise
        finally:
            self.done.set()

    async def _serve(self) -> str:
        middleware = DisconnectMiddleware(self.app)
        if self.kind == "anyio.fail_after":
            with anyio.fail_after(None) as scope:
                self._cancel = lambda: setattr(scope, "deadline", anyio.current_time())
                await middleware(http_scope(), self.receive, self.send)
        elif self.kind == "asyncio.timeout":
            async with asyncio.timeout(None) as timeout:  # type: ignore[attr-defined,unused-ignore]
                loop = asyncio.get_running_loop()
                self._cancel = lambda: timeout.reschedule(loop.time())
                await middleware(http_scope(), self.receive, self.send)
        elif self.trio:
            with anyio.CancelScope() as scope:  # the server's own cancel scope
                self._cancel = scope.cancel
                await middleware(http_scope(), self.receive, self.send)
                return "returned"
            return "cancelled"
        else:
            task = asyncio.current_task()
            assert task is not None

            def cancel() -> None:
                task.cancel()

            self._cancel = cancel
            await middleware(http_scope(), self.receive, self.send)
        return "returned"


def soon(callback: Callable[[], None]) -> None:
    """Call ``callback`` from the event loop as soon as the running step is over."""
    try:
        asyncio.get_running_loop().call_soon(callback)
    except RuntimeError:
        import trio

        trio.lowlevel.current_trio_token().run_sync_soon(callback)


def kinds() -> list[Any]:
    found: list[Any] = ["server", "anyio.fail_after"]
    found.append(
        pytest.param(
            "asyncio.timeout",
            marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout: 3.11+"),
        )
    )
    return found


@pytest.mark.parametrize(
    "order", ["ours first", "together, theirs first", "together, ours first", "theirs first"]
)
@pytest.mark.parametrize("kind", kinds())
async def test_an_outside_cancellation_propagates(
    anyio_backend: object, kind: Kind, order: Order, request: pytest.FixtureRequest
) -> None:
    if kind == "asyncio.timeout" and is_trio(anyio_backend):
        pytest.skip("asyncio.timeout() is asyncio's")
    if sys.version_info < (3, 11) and kind == "server" and not is_trio(anyio_backend):
        if order in ("ours first", "together, ours first"):
            # Python 3.10 counts no cancellation requests: a Task.cancel() that comes after
            # the middleware's, before the app runs again, is folded into it by asyncio; one
            # that comes while the app cleans up raises a CancelledError that holds the
            # middleware's, and is taken for it.
            request.applymarker(pytest.mark.xfail(reason="Python 3.10", strict=True))
    outside = Outside(kind, anyio_backend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(outside.run)
        await outside.record.started.wait()
        with anyio.fail_after(5):
            if order == "ours first":
                outside.leave()
                await outside.cleaning.wait()
                outside.fire()
            elif order.startswith("together"):
                outside.leave(fire_outside_too="before" if "theirs first" in order else "after")
                await outside.cleaning.wait()
            else:
                outside.fire()
                await outside.cleaning.wait()
                outside.leave()
                await wait_disconnected(outside.scope)
            await anyio.sleep(0.01)
            outside.proceed.set()
            await outside.done.wait()
    assert outside.record.events == ["cleaning"]
    assert outside.outcome == ("cancelled" if kind == "server" else "timed out")


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "wrapped"])
async def test_a_scope_around_cancelled_while_the_app_is_shielded_keeps_its_response(
    anyio_backend: object, wrapped: bool
) -> None:
    # FastAPI: a sync dependency's teardown runs in a thread, in a shield, while a scope
    # around the app is cancelled; the app then answers and returns without another await.
    # Bare, the call returns with the response sent: so it does wrapped, its watcher started.
    sent: list[Message] = []
    working = anyio.Event()
    proceed = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        with anyio.CancelScope(shield=True):
            working.set()
            await proceed.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> Message:
        if not sent and not working.is_set():
            return {"type": "http.request", "body": b""}
        await anyio.sleep_forever()
        raise AssertionError("not reached")  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    served = DisconnectMiddleware(app) if wrapped else app
    outcome = "cancelled"
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            nonlocal outcome
            with anyio.CancelScope() as around:
                tg.start_soon(cancel_when_working, around)
                await served(http_scope(), receive, send)
                outcome = "returned"

        async def cancel_when_working(around: anyio.CancelScope) -> None:
            await working.wait()
            await anyio.sleep(0.01)  # outlives the tick: the watcher waits in receive()
            around.cancel()
            await anyio.sleep(0.01)
            proceed.set()

        tg.start_soon(call)
    assert outcome == "returned"
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "wrapped"])
async def test_what_the_apps_clean_up_raises_reaches_a_scope_around_cancelled(
    anyio_backend: object, wrapped: bool
) -> None:
    # The app handles the cancellation of a scope around it and raises its own error from
    # its clean-up: bare, that error reaches the caller; so it does wrapped.
    working = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            working.set()
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            raise RuntimeError("clean-up failed") from None

    async def receive() -> Message:
        if not working.is_set():
            return {"type": "http.request", "body": b""}
        await anyio.sleep_forever()
        raise AssertionError("not reached")  # pragma: no cover

    async def send(message: Message) -> None:
        raise AssertionError("not called")  # pragma: no cover

    served = DisconnectMiddleware(app) if wrapped else app
    raised: list[BaseException] = []
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            with anyio.CancelScope() as around:
                tg.start_soon(cancel_when_working, around)
                try:
                    await served(http_scope(), receive, send)
                except Exception as exc:
                    raised.append(exc)

        async def cancel_when_working(around: anyio.CancelScope) -> None:
            await working.wait()
            await anyio.sleep(0.01)  # outlives the tick: the watcher waits in receive()
            around.cancel()

        tg.start_soon(call)
    assert [str(exc) for exc in raised] == ["clean-up failed"]


@pytest.mark.parametrize("reporter", ["sync", "async"])
async def test_what_the_apps_clean_up_raises_outlives_an_async_on_disconnect(
    anyio_backend: object, reporter: str
) -> None:
    # The client leaves, and a scope around the middleware is cancelled while the app's
    # shielded clean-up runs, which then raises its own error. The report that follows awaits
    # an async on_disconnect, where the scope's cancellation lands: the app's error goes on.
    working, cleaning, proceed = anyio.Event(), anyio.Event(), anyio.Event()
    leave = anyio.Event()
    reports: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            working.set()
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                cleaning.set()
                await proceed.wait()
            raise RuntimeError("clean-up failed") from None

    async def receive() -> Message:
        if not working.is_set():
            return {"type": "http.request", "body": b""}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    async def report_async(disconnect: object) -> None:
        await anyio.sleep(0.001)  # an async metrics client, say
        reports.append(disconnect)  # pragma: no cover (the scope around is cancelled)

    on_disconnect = report_async if reporter == "async" else reports.append
    middleware = DisconnectMiddleware(app, on_disconnect=on_disconnect)
    raised: list[BaseException] = []
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            with anyio.CancelScope() as around:
                tg.start_soon(cancel_while_cleaning, around)
                try:
                    await middleware(http_scope(), receive, send)
                except Exception as exc:
                    raised.append(exc)

        async def cancel_while_cleaning(around: anyio.CancelScope) -> None:
            await working.wait()
            await anyio.sleep(0.01)  # outlives the tick: the watcher waits in receive()
            leave.set()
            await cleaning.wait()
            around.cancel()
            proceed.set()

        tg.start_soon(call)
    assert [str(exc) for exc in raised] == ["clean-up failed"]
    assert len(reports) == (1 if reporter == "sync" else 0)
