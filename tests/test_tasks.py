"""Nothing the middleware starts outlives the request; nothing is started when not needed."""

from __future__ import annotations

import gc
import threading
import weakref

import anyio
import pytest
from apps import FOREVER, Record, read_body, respond, slow_app, work_until_cancelled
from backends import ASYNCIO
from communicator import communicate, http_scope

from asgi_disconnect import DisconnectMiddleware, is_disconnected, wait_disconnected
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = pytest.mark.anyio


async def test_an_app_that_answers_at_once_makes_the_middleware_read_nothing() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.wait()
    assert c.reads == 0


async def test_the_watcher_is_gone_when_the_middleware_returns() -> None:
    # A server that keeps the connection open and never reports a disconnect after the
    # response (gunicorn): the watcher's receive() is pending when the app returns.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await anyio.sleep(0.02)
        await respond(send)

    async with communicate(DisconnectMiddleware(app), sticky=False) as c:
        await c.send_body(b"")
        await c.wait()
        assert c.pending_reads == 0
        assert c.cancelled_reads == 1


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_asyncio_leaves_no_task_behind() -> None:
    import asyncio

    before = asyncio.all_tasks()
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await anyio.sleep(0.02)
        await respond(send)

    async with communicate(DisconnectMiddleware(app), sticky=False) as c:
        await c.send_body(b"")
        await c.wait()
        assert asyncio.all_tasks() - before == {asyncio.current_task()} - before


async def test_a_sync_function_in_a_thread_can_check_for_the_disconnect() -> None:
    noticed = threading.Event()
    running = threading.Event()

    def work(scope: Scope) -> str:
        running.set()
        for _ in range(500):
            if is_disconnected(scope):
                noticed.set()
                return "stopped"
            threading.Event().wait(0.01)
        return "ran to the end"  # pragma: no cover

    results: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        results.append(await anyio.to_thread.run_sync(work, scope))

    async with communicate(DisconnectMiddleware(app, grace_period=10)) as c:
        await c.send_body(b"")
        await anyio.to_thread.run_sync(running.wait, 5)
        await c.disconnect()
        await c.wait()
    assert results == ["stopped"]


async def test_wait_disconnected_returns_when_the_client_leaves() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await wait_disconnected(scope)
        events.append("told")
        await wait_disconnected(scope)  # already gone: at once
        events.append("told again")

    async with communicate(DisconnectMiddleware(app, grace_period=10)) as c:
        await c.send_body(b"")
        await anyio.sleep(0.02)
        await c.disconnect()
        await c.wait()
    assert events == ["told", "told again"]


async def test_several_waiters_all_return_when_the_client_leaves() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(0.01)  # the watcher is already running

        async def waiter(name: str) -> None:
            await wait_disconnected(scope)
            events.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "first")
            tg.start_soon(waiter, "second")

    async with communicate(DisconnectMiddleware(app, grace_period=10)) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert sorted(events) == ["first", "second"]


async def test_requests_that_start_together_each_get_a_watcher() -> None:
    # The second request joins the tick that the first one armed.
    record = Record()
    started = {"a": anyio.Event(), "b": anyio.Event()}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started[scope["path"].strip("/")].set()
        await work_until_cancelled(record)

    middleware = DisconnectMiddleware(app)
    async with (
        communicate(middleware, http_scope(path="/a")) as a,
        communicate(middleware, http_scope(path="/b")) as b,
    ):
        await started["a"].wait()
        await started["b"].wait()
        await a.disconnect()
        await b.disconnect()
    assert record.events == ["cancelled", "cancelled"]


def test_one_middleware_serves_one_event_loop_after_another() -> None:
    import asyncio

    record = Record()
    middleware = DisconnectMiddleware(slow_app(record, read=False))

    async def abandon() -> None:
        async with communicate(middleware) as c:
            await c.send_body(b"")
            await record.started.wait()
            await c.disconnect()
        record.started = anyio.Event()

    asyncio.run(abandon())
    asyncio.run(abandon())
    assert record.events.count("cancelled") == 2


@pytest.mark.parametrize("watched", [False, True], ids=["ticker-decides", "watcher-started"])
@pytest.mark.parametrize("leaves", [False, True], ids=["stays", "leaves"])
async def test_a_requests_state_is_freed_as_it_ends(leaves: bool, watched: bool) -> None:
    # By reference counting, as the middleware returns: not by the garbage collector (a
    # reference cycle), nor at the ticker's next turn (a request it still holds), where under
    # load a thousand requests' state would add up to the collector's next run.
    state: list[weakref.ref[object]] = []
    record = Record()
    working = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        exchange = scope["asgi_disconnect"]
        state.append(weakref.ref(exchange))
        await read_body(receive, record)
        if watched:
            with anyio.fail_after(5):
                while not exchange._has_watcher():  # noqa: ASYNC110
                    await anyio.sleep(0.001)
        working.set()
        await work_until_cancelled(record, FOREVER if leaves else 0)
        await respond(send)

    gc.collect()
    gc.disable()
    try:
        async with communicate(DisconnectMiddleware(app)) as c:
            await c.send_body(b"")
            if leaves:
                await working.wait()
                await c.disconnect()
            await c.wait()
        assert record.events == (["cancelled"] if leaves else ["finished"])
        assert state[0]() is None
    finally:
        gc.enable()


# -- nothing waits forever ------------------------------------------------------------------
# A waiter returns once the client has gone, once the request has ended (the app returned: the
# middleware can no longer hear the client), or once the server's channel has broken.


@pytest.mark.parametrize("leaves", [False, True], ids=["client-stays", "client-leaves"])
async def test_work_the_app_leaves_behind_is_not_left_waiting(leaves: bool) -> None:
    told: list[tuple[str, str]] = []
    state: list[weakref.ref[object]] = []
    respond_now = anyio.Event()

    async def left_behind(scope: Scope, receive: Receive) -> None:
        await wait_disconnected(scope)
        told.append(("wait_disconnected", "returned"))
        told.append(("receive", (await receive())["type"]))

    async with anyio.create_task_group() as detached:

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            state.append(weakref.ref(scope["asgi_disconnect"]))
            await receive()
            detached.start_soon(left_behind, scope, receive)
            await respond_now.wait()
            await respond(send)

        gc.collect()
        gc.disable()
        try:
            async with communicate(DisconnectMiddleware(app, grace_period=10)) as c:
                await c.send_body(b"")
                await anyio.sleep(0.01)
                if leaves:
                    await c.disconnect()
                    await anyio.sleep(0.01)
                respond_now.set()
                await c.wait()
            with anyio.fail_after(5):
                while len(told) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                # Freed by reference counting once the job was done, and the ticker (which
                # holds a request for two ticks, a busy loop's may come late) let it go.
                while state[0]() is not None:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
        finally:
            gc.enable()
    assert told == [("wait_disconnected", "returned"), ("receive", "http.disconnect")]


async def test_many_requests_leave_no_waiter_and_no_state_behind() -> None:
    returned = 0
    state: list[weakref.ref[object]] = []

    async def left_behind(scope: Scope) -> None:
        nonlocal returned
        await wait_disconnected(scope)
        returned += 1

    async with anyio.create_task_group() as detached:

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            state.append(weakref.ref(scope["asgi_disconnect"]))
            detached.start_soon(left_behind, scope)
            await anyio.sleep(0.002)
            await respond(send)

        middleware = DisconnectMiddleware(app)

        async def one() -> None:
            async with communicate(middleware, sticky=False) as c:
                await c.send_body(b"")

        gc.collect()
        gc.disable()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    tg.start_soon(one)
            with anyio.fail_after(5):
                while returned < 200:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
            alive = sum(ref() is not None for ref in state)
        finally:
            gc.enable()
    assert returned == 200
    assert alive == 0


async def test_a_broken_channel_releases_whoever_waits() -> None:
    results: list[str] = []
    error = ConnectionError("the server's channel broke")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await wait_disconnected(scope)  # returns: there is nothing more to hear
        results.append("wait_disconnected returned")
        try:
            await receive()
        except ConnectionError as exc:
            results.append(f"receive raised {exc}")
        await respond(send)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_input({"type": "http.request", "body": b"", "more_body": False})
        await anyio.sleep(0.01)
        await c.send_input(error)  # the watcher's receive() raises
        await c.wait()
    assert results == ["wait_disconnected returned", f"receive raised {error}"]
