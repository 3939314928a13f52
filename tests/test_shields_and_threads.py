"""The cancellation follows anyio's rules: shields hold, threads keep their limiter's bound.

On asyncio the app's task gets one ``CancelledError``, at its first ``await`` outside a shield,
and its clean-up may await, as ``asyncio.timeout()`` delivers it. On trio the cancellation is
delivered at every checkpoint until the app has left, as trio delivers it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import anyio.lowlevel
import pytest
from apps import UNANSWERED, Record, read_body
from backends import ASYNCIO, is_trio
from communicator import Communicator, communicate, http_scope

from asgi_disconnect import DisconnectMiddleware, wait_disconnected
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = pytest.mark.anyio


async def test_a_shielded_section_holds_and_the_cancellation_lands_at_the_next_await() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        with anyio.CancelScope(shield=True):
            record.started.set()
            await wait_disconnected(scope)  # the client has left: the shield holds
            await anyio.sleep(0.01)
            record.events.append("shielded work done")
        record.events.append("between")  # no await: nothing can land here
        try:
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled at the first await after the shield")
            raise
        record.events.append("ran on")  # pragma: no cover

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert record.events == [
        "shielded work done",
        "between",
        "cancelled at the first await after the shield",
    ]
    assert c.returned
    assert c.sent == UNANSWERED


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
@pytest.mark.fast_path  # delivered once
async def test_asyncio_shield_lets_the_shielded_work_finish() -> None:
    record = Record()
    release = anyio.Event()

    async def commit() -> None:
        await release.wait()
        record.events.append("committed")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        record.started.set()
        work = asyncio.ensure_future(commit())
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            record.events.append("cancelled")
            release.set()
            await work  # clean-up that awaits: the shielded work ends
            raise

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled", "committed"]
    assert c.returned


@pytest.mark.fast_path  # delivered once
async def test_clean_up_after_the_cancellation(anyio_backend: object) -> None:
    # asyncio: delivered once, so clean-up may await (close a connection, return it to its
    # pool). trio: delivered at every checkpoint, so clean-up that must await shields itself.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        record.started.set()
        try:
            await anyio.sleep(30)
        finally:
            try:
                await anyio.sleep(0.01)
                await anyio.sleep(0.01)
                record.events.append("clean-up awaited")
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(0.01)
                    record.events.append("shielded clean-up awaited")

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    if is_trio(anyio_backend):
        assert record.events == ["shielded clean-up awaited"]
    else:
        assert record.events == ["clean-up awaited", "shielded clean-up awaited"]
    assert c.returned


async def test_the_apps_task_groups_are_cancelled_with_it() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)

        async def worker(name: str) -> None:
            try:
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                record.events.append(f"{name} cancelled")
                raise

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, "first")
            tg.start_soon(worker, "second")
            record.started.set()

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await record.started.wait()
        await anyio.sleep(0.01)  # both workers wait
        await c.disconnect()
        await c.wait()
    assert sorted(record.events) == ["first cancelled", "second cancelled"]
    assert c.returned
    assert c.error is None


async def test_abandoned_work_in_threads_stays_within_the_limiters_bound() -> None:
    # anyio.to_thread.run_sync (Starlette's and FastAPI's sync endpoints) waits for its thread
    # in a shield while it holds a limiter token. Cancelled through that shield, it would give
    # its token back while the thread runs on, and abandoned requests would grow threads
    # without bound.
    limiter = anyio.CapacityLimiter(2)
    lock = threading.Lock()
    release = threading.Event()
    running = 0
    most = 0
    ran: list[str] = []

    def work(name: str) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1
            ran.append(name)

    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        try:
            await anyio.to_thread.run_sync(work, scope["path"], limiter=limiter)
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled waiting for a thread")
            raise
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled after its thread")
            raise

    middleware = DisconnectMiddleware(app)
    communicators = [Communicator(middleware, scope) for scope in scopes(6)]
    async with closing(communicators), anyio.create_task_group() as tg:
        for c in communicators:
            tg.start_soon(c._run)
            await c.send_body(b"")
        with anyio.fail_after(5):
            # The limiter tells its state but signals no change of it.
            while limiter.borrowed_tokens < 2 or limiter.statistics().tasks_waiting < 4:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        for c in communicators:
            await c.disconnect()
        with anyio.fail_after(5):
            while len(record.events) < 4:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        # The four that waited are cancelled; the two running hold their tokens.
        assert record.events == ["cancelled waiting for a thread"] * 4
        assert limiter.borrowed_tokens == 2
        assert ran == []
        release.set()
    assert most == 2
    assert len(ran) == 2  # the abandoned requests still waiting never ran
    assert record.events[4:] == ["cancelled after its thread"] * 2
    assert limiter.borrowed_tokens == 0
    assert all(c.returned for c in communicators)


def scopes(count: int) -> list[Scope]:
    return [http_scope(path=f"/{i}") for i in range(count)]


@contextmanager
def closing_now(communicator: Communicator) -> Iterator[None]:
    try:
        yield
    finally:
        communicator.close()


@asynccontextmanager
async def closing(communicators: list[Communicator]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for c in communicators:
            c.close()


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
@pytest.mark.fast_path  # delivered once
async def test_clean_up_may_use_anyio_once_the_cancellation_is_delivered() -> None:
    # Delivered once, the cancellation is over: threads, locks and the app's own timeouts
    # work in the clean-up as they do anywhere, as after asyncio.timeout().
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        record.started.set()
        try:
            await anyio.sleep(30)
        finally:
            record.events.append(await anyio.to_thread.run_sync(lambda: "thread ran"))
            async with anyio.Lock():
                record.events.append("lock taken")
            with anyio.move_on_after(0.01) as timeout:
                await anyio.sleep(30)
            record.events.append(f"own timeout {'expired' if timeout.cancelled_caught else ''}")
            record.events.append(f"deadline {anyio.current_effective_deadline()}")

    c = Communicator(DisconnectMiddleware(app))
    with closing_now(c):
        # A native task and timeout: a clean-up that spun on a scope still cancelled would
        # let no anyio timeout through, and hang the test rather than fail it.
        served = asyncio.ensure_future(c._run())
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await asyncio.wait_for(served, 5)
    assert record.events == ["thread ran", "lock taken", "own timeout expired", "deadline inf"]
    assert c.returned


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
@pytest.mark.fast_path  # delivered once
async def test_a_timeout_around_the_middleware_reaches_the_apps_clean_up() -> None:
    # The middleware's cancellation first, then the app's clean-up, which would wait forever:
    # a timeout around the middleware, due once the clean-up has begun, still stops it.
    record = Record()
    forever = anyio.Event()
    outside = anyio.CancelScope()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        record.started.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled by the middleware")
            outside.deadline = anyio.current_time() + 0.05
            try:
                await forever.wait()
            except anyio.get_cancelled_exc_class():
                record.events.append("clean-up cancelled by the timeout")
                raise

    async def serve() -> None:
        with outside:
            await c._run()

    c = Communicator(DisconnectMiddleware(app))
    with closing_now(c):
        served = asyncio.ensure_future(serve())  # a native timeout, as above
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await asyncio.wait_for(served, 10)
    assert record.events == ["cancelled by the middleware", "clean-up cancelled by the timeout"]
    assert outside.cancelled_caught


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
async def test_the_middlewares_scope_delivers_once_whoever_asks_again() -> None:
    # Its building block, by itself: once delivered, the cancellation is over, and asking for
    # it again (a deadline, cancel()) neither cancels the task again nor leaves the scope
    # cancelled without delivering, which anyio's checkpoints would wait on forever.
    from asgi_disconnect._asyncio import CancelOnce

    events: list[str] = []
    with CancelOnce() as scope:
        scope.cancel()
        try:
            await anyio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            scope.cancel()
            scope.deadline = anyio.current_time()
            assert not scope.cancel_called
            await anyio.lowlevel.checkpoint_if_cancelled()
            await anyio.sleep(0.01)
            events.append("clean-up done")
            raise
    assert events == ["cancelled", "clean-up done"]
    assert scope.cancelled_caught
