"""The life of one HTTP request seen by the middleware.

An :class:`Exchange` sits between the server and the app for one request. It is the only
reader of the server's ``receive``: the app's ``receive()`` is served from a small buffer,
and a watcher task reads ahead of the app (within ``read_ahead`` bytes) and then waits for
``http.disconnect``. Nothing is started for a request that ends quickly: the watcher is
spawned once the request has run for a tick, or as soon as the app asks for a message that
only the watcher may read.

The two subclasses hold what differs between the event loops: how the watcher is spawned
and joined, and how the app is cancelled.
"""

from __future__ import annotations

import asyncio
import sys
import time
from asyncio import AbstractEventLoop, CancelledError, Task, TimerHandle, current_task
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import anyio

from ._types import AppScope, Message, Receive, Scope, WrappedApp

if TYPE_CHECKING:  # pragma: no cover
    import trio

# A server that floods the channel with empty or unknown messages must not grow the buffer
# without bound either.
MAX_BUFFERED_MESSAGES = 128

_NONE, _STARTED, _COMPLETE = 0, 1, 2

#: Seconds a request may run before a watcher is started for it: at most twice this.
TICK = 0.001


class Phase(str, Enum):
    """How far a request had got when its client left."""

    #: The request body had not been fully received.
    BODY = "body"
    #: The body was in, no response had been started.
    WORKING = "working"
    #: The response had been started but not completed.
    STREAMING = "streaming"


@dataclass(frozen=True)
class Disconnect:
    """A request that its client abandoned before the response was complete.

    Passed to ``on_disconnect`` once the app has stopped.
    """

    #: The request's ASGI scope.
    scope: Scope
    #: How far the request had got.
    phase: Phase
    #: Seconds from the start of the request to the client leaving.
    elapsed: float


class Exchange:
    # Defaults live on the class: most requests end without touching most of this state,
    # and a request should not pay for setting it.
    _buffer: list[tuple[Message, int]] | None = None
    _buffered = 0
    _body_complete = False
    _asked = False
    _expects_continue: bool | None = None
    _busy = False
    _listening = 0
    _response = _NONE
    _trailers = False
    _changed: anyio.Event | None = None
    _gone: anyio.Event | None = None
    _app_done = False
    failure: Exception | None = None
    failure_seen = False
    disconnected = False
    abandoned: Disconnect | None = None

    def __init__(
        self, scope: Scope, receive: Any, send: Any, read_ahead: int, grace_period: float
    ) -> None:
        self.scope = scope
        self._receive: Receive = receive
        self._send = send
        self._read_ahead = read_ahead
        self._grace_period = grace_period
        self._started_at = time.monotonic()

    # -- what differs between event loops -----------------------------------------------

    ticker_class: type[Ticker]

    async def run(self, app: WrappedApp, scope: AppScope, ticker: Ticker) -> None:
        raise NotImplementedError

    def _spawn_watcher(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def _has_watcher(self) -> bool:
        raise NotImplementedError  # pragma: no cover

    def _cancel_app(self, delay: float) -> None:
        raise NotImplementedError  # pragma: no cover

    async def _take_cancellation(self) -> None:
        """In the app's task: let a cancellation already requested land here.

        An app cancelled at once is cancelled where it waits, even in receive(), rather than
        handed a disconnect to handle in the middle of its body (Starlette would raise
        ClientDisconnect).
        """
        raise NotImplementedError  # pragma: no cover

    def outlived_tick(self) -> None:
        # The ticker calls this one to two ticks after the request began.
        if not self._app_done and not self._has_watcher():
            self._spawn_watcher()

    # -- the app's side ------------------------------------------------------------------

    async def receive(self) -> Message:
        self._asked = True
        while True:
            if self._buffer:
                message, size = self._buffer.pop(0)
                self._buffered -= size
                self._notify()
                return message
            if self.disconnected:
                await self._take_cancellation()
                return {"type": "http.disconnect"}
            if self.failure is not None:
                self.failure_seen = True
                raise self.failure
            if not self._busy and not self._body_complete:
                # Nobody else is reading: the app reads its body straight from the server.
                self._busy = True
                try:
                    message = await self._receive()
                    if self._observe(message) == "http.disconnect":
                        await self._take_cancellation()
                except Exception as exc:
                    # The channel is broken: every later receive() says so rather than hang.
                    self.failure = exc
                    self.failure_seen = True
                    raise
                finally:
                    self._busy = False
                    if self._changed is not None:
                        self._notify()
                return message
            # After the body only the watcher reads: an app that cancels its own receive()
            # (polling for a disconnect) must not cancel the server's, which some servers
            # then answer with a false disconnect.
            if not self._has_watcher():
                self._spawn_watcher()
            await self._wait_for_change(listening=self._body_complete)

    async def send(self, message: Mapping[str, Any]) -> None:
        if self.disconnected:
            return  # the client is gone: nothing reaches it any more
        before = self._response
        try:
            kind = message["type"]
        except Exception:
            kind = None  # not ours to judge: the server will say what is wrong with it
        if kind == "http.response.body" or kind == "http.response.zerocopysend":
            if not message.get("more_body", False) and not self._trailers:
                self._response = _COMPLETE
        elif kind == "http.response.start":
            self._response = _STARTED
            self._trailers = bool(message.get("trailers", False))
        elif kind == "http.response.trailers":
            if not message.get("more_trailers", False):
                self._response = _COMPLETE
        elif kind == "http.response.pathsend":
            self._response = _COMPLETE
        # The response counts as complete before the final send returns: a server may report
        # the disconnect that follows a complete response while that send is still flushing.
        try:
            await self._send(message)
        except OSError:
            # ASGI 2.4: send() raises OSError once the client has gone.
            self._response = before
            self._client_left()
            await self._take_cancellation()

    async def answer_for_the_app(self) -> None:
        """End an abandoned exchange whose app stopped before starting a response.

        Nobody receives it: the server drops what is sent after the client left. It is for
        what wraps the middleware, which may count an app that returns without a response
        as an error (Starlette's ``BaseHTTPMiddleware`` raises "No response returned.").
        499 is the status proxies log for a client that closed the request.
        """
        if self._response != _NONE:
            return
        try:
            await self._send({"type": "http.response.start", "status": 499, "headers": []})
            await self._send({"type": "http.response.body", "body": b""})
        except OSError:
            pass  # ASGI 2.4: the server says, again, that the client has gone

    # -- the watcher ---------------------------------------------------------------------

    async def watch(self) -> None:
        try:
            while not self.disconnected and not self._app_done and self.failure is None:
                if self._busy or not self._may_read_ahead():
                    await self._wait_for_change()
                    continue
                self._busy = True
                try:
                    message = await self._receive()
                finally:
                    self._busy = False
                kind = self._observe(message)
                if kind != "http.disconnect":
                    size = _body_size(message) if kind == "http.request" else 0
                    if self._buffer is None:
                        # A list, made on first use: it holds a few messages at most, and a
                        # long poll that reads nothing pays for none.
                        self._buffer = []
                    self._buffer.append((message, size))
                    self._buffered += size
                self._notify()
        except Exception as exc:
            self.failure = exc
            self._notify()

    def _may_read_ahead(self) -> bool:
        if self._buffer is not None and len(self._buffer) >= MAX_BUFFERED_MESSAGES:
            return False
        if self._body_complete:
            return True
        if not self._asked:
            if self._expects_continue is None:
                self._expects_continue = _expects_continue(self.scope)
            if self._expects_continue:
                # Reading would make the server send 100 Continue for an app that has not
                # decided to accept the body.
                return False
        return self._buffered < self._read_ahead

    # -- shared state --------------------------------------------------------------------

    def _observe(self, message: Message) -> object:
        """Check a message from the server and note what it means for the request."""
        try:
            kind = message["type"]
        except Exception:
            raise TypeError(
                f"the server's receive() returned {message!r}, which is not an ASGI "
                "message (a mapping with a 'type' key)"
            ) from None
        if kind == "http.request":
            if not message.get("more_body", False):
                self._body_complete = True
        elif kind == "http.disconnect":
            self._client_left()
        return kind

    def _client_left(self) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        if self._gone is not None:
            self._gone.set()
        self._notify()
        if self._response == _COMPLETE or self._app_done:
            return  # nothing is lost: work after the response runs to its end
        if not self._body_complete:
            phase = Phase.BODY
        elif self._response == _NONE:
            phase = Phase.WORKING
        else:
            phase = Phase.STREAMING
        self.abandoned = Disconnect(self.scope, phase, time.monotonic() - self._started_at)
        if self._listening:
            # The app awaits receive() after its body: it listens for the disconnect itself
            # (Django >= 5, Quart, Starlette's streaming responses) and now has it. Cancelling
            # it from outside would cut through its own clean-up: Django's handler would
            # orphan the task running the view.
            return
        self._cancel_app(self._grace_period)

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def _wait_for_change(self, listening: bool = False) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        self._listening += listening
        try:
            await changed.wait()
        finally:
            self._listening -= listening

    async def wait_disconnected(self) -> None:
        if self.disconnected:
            return
        if self._gone is None:
            self._gone = anyio.Event()
        if not self._has_watcher():
            self._spawn_watcher()
        await self._gone.wait()


class Ticker:
    """Starts watchers, on one event loop, for the requests that outlive a tick.

    Most requests end within a millisecond. A watcher task for each, or even a callback of
    its own, would cost more than such a request: instead each request joins a list, and one
    timer per loop starts watchers for the requests still running one to two ticks after
    they began. A client that leaves sooner is noticed at most two ticks late.
    """

    def __init__(self, loop: object) -> None:
        #: What tells this ticker's event loop from another: the loop, or trio's token.
        self.loop = loop
        self._young: list[Exchange] = []
        self._old: list[Exchange] = []
        self._armed = False

    def add(self, exchange: Exchange) -> None:
        self._young.append(exchange)
        if not self._armed:
            self._armed = True
            self._arm()

    def _arm(self) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        old = self._old
        self._old = self._young
        self._young = []
        for exchange in old:
            exchange.outlived_tick()
        self._armed = bool(self._old)


class AsyncioTicker(Ticker):
    loop: AbstractEventLoop

    def _arm(self) -> None:
        self.loop.call_later(TICK, self._on_timer)

    def _on_timer(self) -> None:
        self._tick()
        if self._armed:
            self._arm()


def current_trio_token() -> object:
    import trio

    return trio.lowlevel.current_trio_token()


class TrioTicker(Ticker):
    def _arm(self) -> None:
        import trio

        trio.lowlevel.spawn_system_task(self._run, name="asgi_disconnect ticker")

    async def _run(self) -> None:
        import trio

        while self._armed:
            await trio.sleep(TICK)
            self._tick()


def _body_size(message: Message) -> int:
    try:
        return len(message.get("body", b""))
    except TypeError:
        raise TypeError(
            f"the server's receive() returned {message!r}, whose body is not bytes"
        ) from None


def _expects_continue(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"expect" and value.strip().lower() == b"100-continue":
            return True
    return False


class AsyncioExchange(Exchange):
    """Runs the app in the server's task; cancels it with ``Task.cancel()``.

    The app gets one ``CancelledError`` at the ``await`` where it waits, as
    ``asyncio.timeout()`` delivers it, so clean-up code may await freely.
    """

    _host: Task[Any]
    _watcher: Task[None] | None = None
    _timer: TimerHandle | None = None
    _cancel_sent = False
    _cancelling = 0

    ticker_class = AsyncioTicker

    async def run(self, app: WrappedApp, scope: AppScope, ticker: Ticker) -> None:
        assert isinstance(ticker, AsyncioTicker)
        self._loop = ticker.loop
        self._host = current_task(self._loop)  # type: ignore[assignment]
        ticker.add(self)
        try:
            await app(scope, self.receive, self.send)
        except CancelledError:
            if not self._absorb_cancel():
                raise
        finally:
            self._app_done = True
            if self._cancel_sent:
                self._absorb_cancel()
            if self._timer is not None:
                self._timer.cancel()
            watcher = self._watcher
            if watcher is not None:
                watcher.cancel()
                await _join(watcher)
                # A cancelled task keeps its CancelledError, whose traceback holds the
                # watcher's frame and so this exchange: a cycle only the garbage collector
                # would break, keeping the request's state alive until it runs.
                self._watcher = None

    def _spawn_watcher(self) -> None:
        self._watcher = self._loop.create_task(self.watch())

    def _has_watcher(self) -> bool:
        return self._watcher is not None

    def _cancel_app(self, delay: float) -> None:
        if delay:
            self._timer = self._loop.call_later(delay, self._cancel_now)
        else:
            self._cancel_now()

    async def _take_cancellation(self) -> None:
        # Task.cancel() on the running task waits for its next await, which could otherwise
        # come after the app has returned (or raised): in the middleware's clean-up.
        if self._cancel_sent:
            await asyncio.sleep(0)

    def _cancel_now(self) -> None:
        self._cancel_sent = True
        if sys.version_info >= (3, 11):  # pragma: no branch (coverage is measured on 3.11+)
            self._cancelling = self._host.cancelling()
        self._host.cancel()

    def _absorb_cancel(self) -> bool:
        """Undo our cancellation's bookkeeping; tell whether only ours was pending."""
        if not self._cancel_sent:
            return False
        self._cancel_sent = False
        if sys.version_info >= (3, 11):
            # Task.uncancel() tells our cancellation from one that came from outside.
            return self._host.uncancel() <= self._cancelling
        return True  # pragma: no cover (Python 3.10 cannot tell them apart)


async def _join(task: Task[None]) -> None:
    # asyncio.wait() leaves the watcher's own CancelledError in the watcher, and lets one
    # aimed at us through.
    await asyncio.wait((task,))


class TrioExchange(Exchange):
    """Runs the app in a trio cancel scope; the watcher is a system task that it joins."""

    _watch_scope: trio.CancelScope | None = None

    ticker_class = TrioTicker

    async def run(self, app: WrappedApp, scope: AppScope, ticker: Ticker) -> None:
        import trio

        with trio.CancelScope() as self._app_scope:
            ticker.add(self)
            try:
                await app(scope, self.receive, self.send)
            finally:
                self._app_done = True
                if self._watch_scope is not None:
                    self._watch_scope.cancel()
                    with trio.CancelScope(shield=True):
                        await self._watch_done.wait()

    def _spawn_watcher(self) -> None:
        import trio

        self._watch_scope = trio.CancelScope()
        self._watch_done = trio.Event()
        trio.lowlevel.spawn_system_task(self._watch_in_scope, name="asgi_disconnect watcher")

    async def _watch_in_scope(self) -> None:
        assert self._watch_scope is not None
        try:
            with self._watch_scope:
                await self.watch()
        finally:
            self._watch_done.set()

    def _has_watcher(self) -> bool:
        return self._watch_scope is not None

    def _cancel_app(self, delay: float) -> None:
        import trio

        if delay:
            self._app_scope.deadline = min(self._app_scope.deadline, trio.current_time() + delay)
        else:
            self._app_scope.cancel()

    async def _take_cancellation(self) -> None:
        import trio

        await trio.lowlevel.checkpoint_if_cancelled()
