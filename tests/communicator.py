"""A scripted ASGI server for one request, in the vocabulary of ``asgiref.testing``.

``send_input`` queues what the server's ``receive()`` returns, ``receive_output`` and
``receive_nothing`` read what the app sent. Servers differ after a disconnect: ``sticky``
repeats it on every later ``receive()`` (uvicorn, granian), otherwise it is delivered once
and ``receive()`` then blocks (hypercorn, daphne). The app runs as servers run it, in a task
of its own that, on asyncio, holds no anyio state.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio

from asgi_disconnect._types import ASGIApp, Message, Scope

TIMEOUT = 5.0


def http_scope(**extra: Any) -> Scope:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


class Communicator:
    def __init__(
        self,
        app: ASGIApp,
        scope: Scope | None = None,
        *,
        sticky: bool = True,
        send_raises: bool = False,
        receive: Callable[[], Awaitable[Any]] | None = None,
        send: Callable[[Message], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        # A server's own receive or send, in place before the app starts (under the eager
        # task factory it starts before communicate() yields, with what it was handed).
        if receive is not None:
            self.receive = receive  # type: ignore[method-assign,assignment]
        if send is not None:
            self.send = send  # type: ignore[method-assign,assignment]
        self.scope = http_scope() if scope is None else scope
        self.sticky = sticky
        self.send_raises = send_raises
        self._inputs, self._input_stream = anyio.create_memory_object_stream[Any](math.inf)
        self._output_sink, self._outputs = anyio.create_memory_object_stream[Message](math.inf)
        self.reads = 0
        self.pending_reads = 0
        self.cancelled_reads = 0
        self.sent: list[Message] = []
        self.disconnected = False
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.returned = False

    async def receive(self) -> Any:
        if self.disconnected and self.sticky:
            return {"type": "http.disconnect"}
        if self.pending_reads:
            raise AssertionError("two receive() calls in flight at once")
        self.reads += 1
        self.pending_reads += 1
        try:
            item = await self._input_stream.receive()
        except anyio.get_cancelled_exc_class():
            self.cancelled_reads += 1
            raise
        finally:
            self.pending_reads -= 1
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, dict) and item.get("type") == "http.disconnect":
            self.disconnected = True
        return item

    async def send(self, message: Message) -> None:
        if self.disconnected and self.send_raises:
            raise ConnectionResetError("the client has gone")
        self.sent.append(message)
        self._output_sink.send_nowait(message)  # like uvicorn: no wait unless the socket is full

    # -- the test's side -----------------------------------------------------------------

    async def send_input(self, message: Any) -> None:
        await self._inputs.send(message)

    async def send_body(self, *chunks: bytes) -> None:
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            await self.send_input({"type": "http.request", "body": chunk, "more_body": more})

    async def disconnect(self) -> None:
        await self.send_input({"type": "http.disconnect"})

    async def receive_output(self) -> Message:
        with anyio.fail_after(TIMEOUT):
            return await self._outputs.receive()

    async def receive_nothing(self) -> bool:
        with anyio.move_on_after(0.05):
            await self._outputs.receive()
            return False
        return True

    async def wait(self) -> None:
        """Wait for the app to return or raise (``error`` holds what it raised)."""
        with anyio.fail_after(TIMEOUT):
            await self.done.wait()

    def close(self) -> None:
        for stream in (self._inputs, self._input_stream, self._output_sink, self._outputs):
            stream.close()

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
            self.returned = True
        except anyio.get_cancelled_exc_class() as exc:
            self.error = exc
            raise
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


@asynccontextmanager
async def communicate(
    app: ASGIApp, scope: Scope | None = None, **kw: Any
) -> AsyncIterator[Communicator]:
    communicator = Communicator(app, scope, **kw)
    try:
        async with serving(communicator._run):
            yield communicator
            with anyio.fail_after(TIMEOUT):
                await communicator.done.wait()
    finally:
        communicator.close()


@asynccontextmanager
async def serving(run: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run ``run`` as servers run a request: in a task of its own, which on asyncio is a plain
    asyncio task that holds no anyio state (anyio's task groups give theirs some)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio, whose tasks are all trio's own
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(run)
            yield
        return
    task = loop.create_task(run())
    try:
        yield
    finally:
        if not task.done():
            task.cancel()
        await asyncio.wait((task,))
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
