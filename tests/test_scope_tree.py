"""The app is cancelled by anyio's rules wherever it stands in anyio's tree of scopes.

On asyncio a request that is never cancelled enters no anyio scope: the middleware's is put
in place when its client leaves, between the scope the middleware was called in (none, for a
server's plain task) and whatever the app has entered by then. Each case is run both where a
server runs the middleware, in a new task, and inside an anyio scope of the caller's, which
must be whole again once the middleware returns: it still cancels and still shows its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

import anyio
import anyio.lowlevel
import pytest
from backends import is_trio

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

Where = Literal["no scope", "a scope of its own", "a task group", "scopes it has left", "a shield"]
WHERE: list[Where] = [
    "no scope",
    "a scope of its own",
    "a task group",
    "scopes it has left",
    "a shield",
]


class Request:
    """The server's side: the body, then the client leaves once the app is at work."""

    def __init__(self) -> None:
        self.working = anyio.Event()
        self.sent: list[Message] = []
        self._read = False

    async def receive(self) -> Message:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": b""}
        await self.working.wait()
        await anyio.sleep(0.01)  # the app waits where it waits
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def app_in(
    where: Where, events: list[str], request: Request
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def work(name: str, working: Callable[[], None] = lambda: None) -> None:
        try:
            working()
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            events.append(f"{name} cancelled")
            raise

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        working = request.working.set
        if where == "no scope":
            await work("app", working)
        elif where == "a scope of its own":
            with anyio.CancelScope():
                with anyio.move_on_after(60):
                    await work("app", working)
        elif where == "a task group":
            async with anyio.create_task_group() as tg:
                tg.start_soon(work, "child")
                await work("app", working)
        elif where == "scopes it has left":
            with anyio.move_on_after(60):
                await anyio.lowlevel.checkpoint()
            await work("app", working)
        else:
            with anyio.CancelScope(shield=True):
                working()
                await anyio.sleep(0.05)
                events.append("shielded work done")
            await work("app")
        events.append("app returned")  # pragma: no cover (it is cancelled)

    return app


async def serve(where: Where, events: list[str]) -> Request:
    request = Request()
    middleware = DisconnectMiddleware(app_in(where, events, request))
    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    await middleware(scope, request.receive, request.send)
    return request


def expected(where: Where) -> list[str]:
    if where == "a task group":
        return ["app cancelled", "child cancelled"]
    if where == "a shield":
        return ["shielded work done", "app cancelled"]
    return ["app cancelled"]


async def in_a_new_task(backend: object, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """As servers run a request: on asyncio, a plain task that holds no anyio state."""
    with anyio.fail_after(5):  # around the task, not in it
        if is_trio(backend):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
        else:
            await asyncio.get_running_loop().create_task(run())


@pytest.mark.parametrize("where", WHERE)
async def test_in_a_servers_task(anyio_backend: object, where: Where) -> None:
    events: list[str] = []
    after: list[object] = []

    async def run() -> None:
        deadline = anyio.current_effective_deadline()
        request = await serve(where, events)
        after.append(request.sent[0]["status"])
        # The task's anyio state is whole again: its deadline, and a scope of its own works.
        after.append(anyio.current_effective_deadline() == deadline)
        with anyio.move_on_after(0.01) as own:
            await anyio.sleep(5)
        after.append(own.cancelled_caught)

    await in_a_new_task(anyio_backend, run)
    assert sorted(events) == sorted(expected(where))
    assert after == [499, True, True]


@pytest.mark.parametrize("where", WHERE)
async def test_inside_a_scope_of_the_callers(anyio_backend: object, where: Where) -> None:
    events: list[str] = []
    after: list[object] = []

    async def run() -> None:
        with anyio.CancelScope(deadline=anyio.current_time() + 4) as around:
            await serve(where, events)
            # The scope around is whole again: it shows its deadline, and it cancels.
            after.append(anyio.current_effective_deadline() == around.deadline)
            around.deadline = anyio.current_time() + 0.01
            await anyio.sleep(5)
            after.append("not cancelled")  # pragma: no cover (a failure)
        after.append(around.cancelled_caught)

    await in_a_new_task(anyio_backend, run)
    assert sorted(events) == sorted(expected(where))
    assert after == [True, True]


@pytest.mark.parametrize("grace_period", [0.0, 0.05], ids=["outer-told", "outer-cancelled-first"])
async def test_a_middleware_inside_another_in_the_same_task(
    anyio_backend: object, grace_period: float
) -> None:
    # A router that calls a sub-app, behind a middleware of its own, with a scope of its own:
    # the inner middleware serves that request too. With a grace period the outer one is
    # cancelled first, and its scope goes in first: the inner one's must go below it.
    events: list[str] = []
    after: list[object] = []

    async def leaf(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            events.append("leaf cancelled")
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.1)  # clean-up that awaits, past the outer's grace
            raise

    inner = DisconnectMiddleware(leaf)

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        await inner({k: v for k, v in scope.items() if k != "asgi_disconnect"}, receive, send)

    outer = DisconnectMiddleware(router, grace_period=grace_period)
    request = Request()
    request.working.set()

    async def run() -> None:
        with anyio.CancelScope(deadline=anyio.current_time() + 4) as around:
            scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
            await outer(scope, request.receive, request.send)
            after.append(anyio.current_effective_deadline() == around.deadline)
            around.deadline = anyio.current_time() + 0.01
            await anyio.sleep(5)
        after.append(around.cancelled_caught)

    await in_a_new_task(anyio_backend, run)
    assert events == ["leaf cancelled"]
    assert after == [True, True]
