"""On asyncio the middleware's cancellation reaches the app once, whatever anyio scopes it holds.

The property: when the client leaves, the task running the app gets one ``CancelledError``.
Its clean-up (``except CancelledError: await ...; raise``) then runs to its end, awaiting and
using anyio as it likes, and the middleware absorbs that error. It holds when an anyio scope
in the app (``move_on_after``, ``move_on_at``, ``fail_after``) is cancelled too: before the
middleware's cancellation (the app went on), in the same loop iteration, or after it, before
the app runs again; nested two deep; around a shield the app sits in. The ``CancelledError``
the app gets may come from its own scope, which lets it propagate because the middleware's is
cancelled around it: that one is the delivery, and none follows.

Python 3.10 counts no cancellation requests, so the middleware cannot tell that a scope of the
app's delivered for it: there the clean-up is cancelled again (see docs/how-it-cancels.md).

Each request runs as servers run it, in a new plain asyncio task that holds no anyio state.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal

import anyio
import anyio.lowlevel
import pytest
from backends import ASYNCIO

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import Message, Receive, Scope, Send

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ASYNCIO),
    pytest.mark.fast_path,  # the portable path delivers at every await, as anyio does
]

#: For the cases where the app's own scope delivers the middleware's cancellation.
ON_310 = pytest.mark.xfail(
    sys.version_info < (3, 11), reason="Python 3.10 counts no cancellation requests", strict=True
)
WHENS = [
    "before",
    pytest.param("together, inner first", marks=ON_310),
    "ours, then inner",
]

Kind = Literal["move_on_after", "move_on_at", "fail_after"]
When = Literal["before", "together, inner first", "ours, then inner"]

KINDS: list[Kind] = ["move_on_after", "move_on_at", "fail_after"]
#: What the app did, by when its own scope was cancelled: before the middleware's, it went on.
EXPECTED = {
    "before": ["own scope over", "cancelled", "cleaned up"],
    "together, inner first": ["cancelled", "cleaned up"],
    "ours, then inner": ["cancelled", "cleaned up"],
}


def inner_scope(kind: Kind, scopes: list[anyio.CancelScope]) -> AbstractContextManager[Any]:
    """One of the app's own anyio scopes, with no deadline of its own: the test cancels it."""
    if kind == "move_on_after":
        scope = anyio.move_on_after(math.inf)
    elif kind == "move_on_at":
        scope = anyio.move_on_at(math.inf)
    else:

        @contextmanager
        def failing() -> Iterator[anyio.CancelScope]:
            with anyio.fail_after(math.inf) as scope:
                yield scope

        return _noting(failing(), scopes)
    scopes.append(scope)
    return scope


@contextmanager
def _noting(
    manager: AbstractContextManager[anyio.CancelScope], scopes: list[anyio.CancelScope]
) -> Iterator[anyio.CancelScope]:
    with manager as scope:
        scopes.append(scope)
        yield scope


class Request:
    """One request, served as a server serves it, whose client leaves when the test says."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.scopes: list[anyio.CancelScope] = []
        self.working = asyncio.Event()
        self.over = asyncio.Event()
        self.leave = asyncio.Event()
        self.sent: list[Message] = []
        self.with_disconnect: Callable[[], None] | None = None
        self.after_disconnect: Callable[[], None] | None = None
        self._read = False

    async def receive(self) -> Message:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": b""}
        await self.leave.wait()
        # In the very step in which the middleware hears the client leave, or in the
        # callback after it, before the app runs again.
        if self.with_disconnect is not None:
            self.with_disconnect()
        if self.after_disconnect is not None:
            asyncio.get_running_loop().call_soon(self.after_disconnect)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def cancel_inner(self) -> None:
        for scope in self.scopes:
            scope.cancel()

    async def serve(self, app: Callable[[Scope, Receive, Send], Any]) -> asyncio.Task[None]:
        scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        loop = asyncio.get_running_loop()
        return loop.create_task(DisconnectMiddleware(app)(scope, self.receive, self.send))


async def clean_up(events: list[str]) -> None:
    """What clean-up does: await, use anyio's threads, locks and sleeps."""
    events.append("cancelled")
    await asyncio.sleep(0)
    await anyio.sleep(0.01)
    await anyio.to_thread.run_sync(lambda: None)
    async with anyio.Lock():
        await anyio.lowlevel.checkpoint()
    events.append("cleaned up")


async def cancel_when(request: Request, when: When) -> None:
    if when == "before":
        request.cancel_inner()
        await request.over.wait()
    elif when == "together, inner first":
        request.with_disconnect = request.cancel_inner
    else:
        request.after_disconnect = request.cancel_inner
    request.leave.set()


async def finish(request: Request, task: asyncio.Task[None], events: list[str]) -> None:
    await asyncio.wait_for(task, 5)
    assert request.events == events
    assert [message["status"] for message in request.sent[:1]] == [499]


@pytest.mark.parametrize("when", WHENS)
@pytest.mark.parametrize("kind", KINDS)
async def test_one_delivery_with_a_scope_of_the_apps_cancelled_too(kind: Kind, when: When) -> None:
    request = Request()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            with inner_scope(kind, request.scopes):
                request.working.set()
                await anyio.sleep(30)
            request.events.append("own scope over")
            request.over.set()
            await anyio.sleep(30)
        except asyncio.CancelledError:
            await clean_up(request.events)
            raise

    task = await request.serve(app)
    await request.working.wait()
    await cancel_when(request, when)
    await finish(request, task, EXPECTED[when])


@pytest.mark.parametrize("when", WHENS)
async def test_one_delivery_with_two_of_the_apps_scopes_nested(when: When) -> None:
    request = Request()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            with (
                inner_scope("move_on_after", request.scopes),
                inner_scope("fail_after", request.scopes),
            ):
                request.working.set()
                await anyio.sleep(30)
            request.events.append("own scope over")
            request.over.set()
            await anyio.sleep(30)
        except asyncio.CancelledError:
            await clean_up(request.events)
            raise

    task = await request.serve(app)
    await request.working.wait()
    await cancel_when(request, when)
    await finish(request, task, EXPECTED[when])


@ON_310
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("inner_first", [True, False], ids=["inner-first", "ours-first"])
async def test_one_delivery_when_both_are_cancelled_while_the_app_is_shielded(
    kind: Kind, inner_first: bool
) -> None:
    # The app's scope and the middleware's are both cancelled while the app sits in a shield
    # inside its scope: the cancellation lands at the first await after the shield, once.
    request = Request()
    both = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            with inner_scope(kind, request.scopes):
                with anyio.CancelScope(shield=True):
                    request.working.set()
                    await both.wait()
                    await anyio.sleep(0.01)
                await anyio.sleep(30)
        except asyncio.CancelledError:
            await clean_up(request.events)
            raise

    task = await request.serve(app)
    await request.working.wait()
    if inner_first:
        request.cancel_inner()
    else:
        request.after_disconnect = request.cancel_inner
    request.leave.set()
    await asyncio.sleep(0.01)
    both.set()
    await finish(request, task, ["cancelled", "cleaned up"])


@ON_310
async def test_one_delivery_at_the_deadline_to_an_app_that_times_itself_by_it() -> None:
    # The way docs/how-it-cancels.md shows: the app bounds its own wait by the middleware's
    # deadline, which its scope and the middleware's then reach in the same iteration.
    events: list[str] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            with anyio.move_on_at(anyio.current_effective_deadline()):
                await anyio.sleep(30)
            events.append("went on")
        except asyncio.CancelledError:
            await clean_up(events)
            raise

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    task = asyncio.get_running_loop().create_task(
        DisconnectMiddleware(app, timeout=0.05)(scope, receive, send)
    )
    await asyncio.wait_for(task, 5)
    assert events == ["cancelled", "cleaned up"]
    assert [message.get("status") for message in sent[:1]] == [504]


# -- a native cancellation in the same loop iteration ------------------------------------------
# asyncio folds two cancel() calls that come before the task runs again into one
# CancelledError. The middleware's, coming after a server's Task.cancel() or an
# asyncio.timeout() of the app's that has not reached the app yet, is folded into it too.


async def wait(how: str) -> None:
    if how == "sleeping":
        await asyncio.sleep(30)
    elif how == "yielding":  # no future to cancel: the request waits on the task itself
        while True:  # noqa: ASYNC110
            await asyncio.sleep(0)
    else:
        with anyio.move_on_after(30):  # a scope of the app's that is not cancelled
            await asyncio.sleep(30)


@pytest.mark.parametrize("how", ["sleeping", "yielding", "in a scope of its own"])
async def test_one_delivery_with_a_server_cancel_just_before(how: str) -> None:
    request = Request()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            request.working.set()
            await wait(how)
        except asyncio.CancelledError:
            await clean_up(request.events)
            raise

    task = await request.serve(app)
    await request.working.wait()

    def server_cancels() -> None:
        task.cancel()  # in the step in which the middleware hears the client leave, first

    request.with_disconnect = server_cancels
    request.leave.set()
    await asyncio.wait((task,), timeout=5)
    assert request.events == ["cancelled", "cleaned up"]
    assert task.cancelled()  # the server's cancellation goes on


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout_at: 3.11+")
async def test_one_delivery_at_the_deadline_to_an_app_that_times_itself_with_asyncio() -> None:
    # The app's asyncio.timeout_at() is due a microsecond before the middleware's deadline:
    # the loop runs both timers in the same iteration, the app's first.
    events: list[str] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            async with asyncio.timeout_at(anyio.current_effective_deadline() - 1e-6):  # type: ignore[attr-defined,unused-ignore]
                await asyncio.sleep(30)
            events.append("went on")  # pragma: no cover
        except (asyncio.CancelledError, TimeoutError):
            await clean_up(events)
            raise

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    task = asyncio.get_running_loop().create_task(
        DisconnectMiddleware(app, timeout=0.05)(scope, receive, send)
    )
    await asyncio.wait_for(task, 5)
    assert events == ["cancelled", "cleaned up"]
    assert [message.get("status") for message in sent[:1]] == [504]
