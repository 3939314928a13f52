"""The life of one HTTP request between the server and the app, on any event loop.

An :class:`Exchange` sits between the server and the app for one request. It is the only
reader of the server's ``receive``: the app's ``receive()`` is served from a small buffer,
and a watcher task reads ahead of the app (within ``read_ahead`` bytes), then waits for
``http.disconnect``. Nothing is started for a request that ends quickly: the loop's
:class:`Ticker` starts the watcher once the request has outlived a tick, or the app does by
asking for a message that only the watcher may read.

What differs between event loops (how the app runs and is cancelled, how the watcher is
spawned and joined) lives in ``_asyncio.py`` and ``_trio.py``; nothing here branches on
the loop.
"""

from __future__ import annotations

import asyncio.coroutines
import contextvars
import inspect
import math
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import CodeType, FrameType
from typing import Any, TypeVar

import anyio

from ._servers import end_cut_response
from ._stop import Stop
from ._types import AppScope, Message, Receive, Scope, Send, WrappedApp

# A server that floods the channel with empty or unknown messages must not grow the buffer
# without bound either.
MAX_BUFFERED_MESSAGES = 128

_NONE, _STARTED, _COMPLETE = 0, 1, 2

#: The scope key under which the middleware hands the app the request's state.
SCOPE_KEY = "asgi_disconnect"

#: Seconds a request may run before a watcher is started for it: at most twice this.
TICK = 0.001

_DISCONNECT = "http.disconnect"

#: Code that reads the request body and stops cleanly on ``http.disconnect``: an app waiting in
#: it is told, as after its body, rather than cancelled in the middle of it. The integrations
#: (``_django.py``, ``_quart.py``) note their framework's, once it is imported.
LISTENING_READERS: set[CodeType] = set()
#: Of those, the ones whose framework stops its own work whenever the client leaves, once they
#: have read the whole body: from then on the app is never cancelled from outside.
STOPPING_READERS: set[CodeType] = set()

# How far up from receive() a listening reader is looked for: past what wraps receive()
# (OpenTelemetry's, Sentry's and Channels' wrappers are one or two calls deep).
_READER_DEPTH = 5


def _listening_reader() -> CodeType | None:
    """The listening reader that called receive(), if any, however deep in wrappers."""
    frame: FrameType | None = sys._getframe(2)
    depth = 0
    while frame is not None and depth < _READER_DEPTH:
        if frame.f_code in LISTENING_READERS:
            return frame.f_code
        frame = frame.f_back
        depth += 1
    return None


class Phase(str, Enum):
    """How far a request had got when its client left or its deadline passed."""

    QUEUED = "queued"
    """The deadline had passed before the request reached the app: it was answered 503, and
    the app was never called."""
    BODY = "body"
    """The request body had not been fully received."""
    WORKING = "working"
    """The body was in, no response had been started."""
    STREAMING = "streaming"
    """The response had been started but not completed."""


class Cause(str, Enum):
    """Why the app of a request was stopped."""

    CLIENT_LEFT = "client_left"
    """The client went away."""
    DEADLINE = "deadline"
    """The request's deadline passed: the client was answered 504, or its response was cut."""


@dataclass(frozen=True, repr=False)
class Disconnect:
    """A request that was stopped before its response was complete.

    Passed to ``on_disconnect`` once the app has stopped. Its ``repr()`` names the request
    by method and path only: the scope holds headers (cookies, ``Authorization``) and the
    query string, which have no place in a log line.

    :ivar scope: the scope the app saw, with what routing added to it (Starlette's
        ``route`` and ``path_params``); for ``Phase.QUEUED``, the server's scope.
    :ivar phase: how far the request had got: ``Phase.QUEUED``, ``Phase.BODY``,
        ``Phase.WORKING`` or ``Phase.STREAMING``.
    :ivar elapsed: seconds from when the middleware received the request to the client
        leaving or the deadline passing (0 for ``Phase.QUEUED``).
    :ivar cause: ``Cause.CLIENT_LEFT`` or ``Cause.DEADLINE``.
    """

    #: The scope the app saw, with what routing added to it (``route``, ``path_params``).
    scope: Scope
    #: How far the request had got.
    phase: Phase
    #: Seconds from the start of the request to the client leaving or the deadline passing.
    elapsed: float
    #: Whether the client left or the deadline passed.
    cause: Cause = Cause.CLIENT_LEFT

    def __repr__(self) -> str:
        scope = self.scope
        return (
            f"Disconnect(method={scope.get('method')!r}, path={scope.get('path')!r}, "
            f"phase={self.phase!r}, elapsed={self.elapsed!r}, cause={self.cause!r})"
        )


_Function = TypeVar("_Function", bound=Callable[..., Any])


def _awaited(function: _Function) -> _Function:
    """Mark a function that returns an awaitable as a coroutine function.

    What an app is handed as ``send`` is awaited like a coroutine function's coroutine, and
    some code checks before it awaits: asgiref's ``async_to_sync()`` (a WSGI app behind
    ``WsgiToAsgi``, a sync Channels consumer) warns about a callable that is not one. Both
    marks: asyncio's ``iscoroutinefunction()`` looks for its own before Python 3.12,
    ``inspect``'s from 3.12 on.
    """
    # None where a Python has dropped asyncio's mark: nothing looks for it there.
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    function._is_coroutine = marker  # type: ignore[attr-defined]
    mark = getattr(inspect, "markcoroutinefunction", None)
    return function if mark is None else mark(function)


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
    #: How far the response had got when the app's messages began to be dropped.
    _forwarded: int | None = None
    _trailers = False
    _changed: anyio.Event | None = None
    _gone: anyio.Event | None = None
    _ended = False
    #: The app stops itself when told (Django >= 5, once it has begun the request).
    stops_itself = False
    #: Start the watcher as soon as the body is in (Django < 5, which never listens).
    listens_after_body = False
    failure: Exception | None = None
    failure_seen = False
    disconnected = False
    #: Set when the client left, or the deadline passed, before the response was complete.
    phase: Phase | None = None
    left_after = 0.0
    cause = Cause.CLIENT_LEFT
    #: When the request's time is up, on ``time.monotonic()``'s clock; None for never.
    deadline: float | None = None

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        read_ahead: int,
        grace_period: float,
        ticker: Ticker,
        budget: float | None = None,
        stopper: Stop | None = None,
    ) -> None:
        self.scope = scope
        #: What runs when the request is stopped (see _stop.py).
        self.stopper = Stop() if stopper is None else stopper
        self._receive = receive
        self._send = send
        #: Whether the app's messages may go straight to the server's send() (see send()).
        self._direct = not _send_raises(scope)
        self._read_ahead = read_ahead
        self._grace_period = grace_period
        self._ticker = ticker
        self._started_at = time.monotonic()
        self._budget = budget
        if budget is not None:
            self.deadline = self._started_at + budget
        # The request's own context: the watcher calls the server's receive() in it, so that
        # tracing and logging see this request, not whichever request armed the ticker.
        self._context = contextvars.copy_context()

    # -- what differs between event loops -----------------------------------------------

    async def run(self, app: WrappedApp, scope: AppScope) -> None:
        """Run the app, cancellable by :meth:`_cancel_app`; join the watcher after it."""
        raise NotImplementedError

    def _spawn_watcher(self) -> None:
        raise NotImplementedError

    def _has_watcher(self) -> bool:
        raise NotImplementedError

    def _cancel_app(self, delay: float) -> None:
        raise NotImplementedError

    def _arm_deadline(self) -> None:
        """Have :meth:`_deadline_passed` called when the deadline passes."""

    def _call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Have ``callback`` called in ``delay`` seconds, unless the request is over first."""
        raise NotImplementedError

    def _lift_deadline(self) -> None:
        """The response is complete: the deadline no longer applies."""

    def _spare_app(self) -> None:
        """The app answered in its grace period: what it does from now on is not cancelled."""
        raise NotImplementedError

    async def _take_cancellation(self) -> None:
        """In the app's task: let a cancellation already requested land here.

        An app cancelled at once is cancelled where it waits, even in receive(), rather than
        handed a disconnect to handle in the middle of its body (Starlette would raise
        ClientDisconnect).
        """
        raise NotImplementedError

    # -- the request's life --------------------------------------------------------------

    def outlived_tick(self) -> None:
        # The ticker calls this one to two ticks after the request began: a request that ends
        # sooner costs no watcher and no timer for its deadline.
        self._ensure_watcher()
        if self.deadline is not None:
            self._arm_deadline()

    def _ensure_watcher(self) -> None:
        if not self._ended and not self._has_watcher():
            self._spawn_watcher()

    def _end(self) -> None:
        """The app has returned: the request is over, whatever else still holds it."""
        if self.deadline is not None and not self.disconnected and self.past_deadline():
            # It returned after its deadline, its response not complete, and before the
            # deadline's timer had its turn (a loop held up by blocking code; trio's own
            # cancellation): too late all the same.
            self.cause = Cause.DEADLINE
            self.disconnected = True
            self._note_phase()
        self._ended = True
        self._ticker.remove(self)
        self.stopper.finish()
        # Nothing may wait for a request that is over: receive() and wait_disconnected()
        # from work the app left behind return now.
        if self._gone is not None:
            self._gone.set()
        self._notify()

    # -- the app's side ------------------------------------------------------------------

    async def receive(self) -> Message:
        self._asked = True
        reader = _listening_reader() if LISTENING_READERS else None
        while True:
            if self._buffer:
                message, size = self._buffer.pop(0)
                self._buffered -= size
                self._notify()
                if reader is not None:
                    self._read_by(reader)
                return message
            if self.disconnected:
                await self._take_cancellation()
                return {"type": _DISCONNECT}
            if self.failure is not None:
                self.failure_seen = True
                raise self.failure
            if self._ended or (self._response == _COMPLETE and self._body_complete):
                # As the spec says, and servers answer, once the response is over: at once,
                # for code that takes only a message ready now (Starlette's
                # is_disconnected()), whether or not the watcher waits in the server's.
                return {"type": _DISCONNECT}
            # The app waits. After its body, or in a body reader that handles the disconnect,
            # it listens for it itself. Counted before the watcher is spawned: under an eager
            # task factory the watcher runs at once and may hear it before this call waits.
            listening = self._body_complete or reader is not None
            self._listening += listening
            try:
                if not self._busy and not self._body_complete:
                    message = await self._read_for_the_app()
                    if reader is not None:
                        self._read_by(reader)
                    return message
                # After the body only the watcher reads: an app that cancels its own
                # receive() (polling for a disconnect) must not cancel the server's, which
                # some servers then answer with a false disconnect.
                changed = self._change()
                self._ensure_watcher()
                await changed.wait()
            finally:
                self._listening -= listening

    def _read_by(self, reader: CodeType) -> None:
        if self._body_complete and reader in STOPPING_READERS:
            self.stops_itself = True

    async def _read_for_the_app(self) -> Message:
        # Nobody else is reading: the app reads its body straight from the server.
        self._busy = True
        try:
            message = await self._receive()
            if self._observe(message) == _DISCONNECT:
                await self._take_cancellation()
            elif self._body_complete and self.listens_after_body:
                self._ensure_watcher()
        except Exception as exc:
            self._broken(exc)
            self.failure_seen = True
            raise
        finally:
            self._busy = False
            if self._changed is not None:
                self._notify()
        return message

    @_awaited
    def send(self, message: Mapping[str, Any]) -> Awaitable[None]:
        try:
            # What starts or ends a response (most messages) is told apart at the first look.
            if not (
                message.get("more_body")
                and self._direct
                and not self.disconnected
                and message["type"] == "http.response.body"
            ):
                return self._send_watched(message)
        except Exception:
            return self._send_watched(message)  # not ours to judge: the server will say
        deadline = self.deadline
        if deadline is None or time.monotonic() < deadline:
            # A chunk of a response that goes on, while the client is there as far as
            # anyone knows, to a server that says nothing through send() when it leaves
            # (ASGI < 2.4: a no-op): it changes nothing the middleware follows, so the
            # app awaits the server's own send, as it would bare. A coroutine of the
            # middleware's around every chunk would cost more than all the rest of
            # send(). What starts or ends the response goes the watched way: it counts
            # once its send runs, not when it is made (a send never awaited, or one that
            # fails, leaves the response as it was).
            return self._send(message)  # type: ignore[arg-type]
        return self._send_watched(message)

    async def _send_watched(self, message: Mapping[str, Any]) -> None:
        forward = True
        deadline = self.deadline
        if deadline is not None and time.monotonic() >= deadline:
            # Whether or not its timer has fired yet: nothing the app sends now reaches the
            # client, which gets the middleware's 504 or a cut response.
            self._deadline_passed()
        if self.disconnected:
            # The client is gone. An app being cancelled is cancelled here (a sync endpoint
            # answering once its thread is done); one that was told first (a grace period)
            # hears what its server says. Servers of ASGI 2.4 say it themselves, with an
            # OSError or nothing; older ones take it as a no-op, some badly (hypercorn's
            # HTTP/2 send() never returns): what it sends then goes nowhere. After a deadline
            # the middleware answers: what the app sends goes nowhere either.
            await self._take_cancellation()
            if self.cause is Cause.DEADLINE:
                return
            if _spec_version(self.scope) < (2, 4):
                # Dropped, but followed: a response the app completes is complete for it, and
                # what it does next is work after the response.
                if self._forwarded is None:
                    self._forwarded = self._response
                forward = False
        before = self._response
        answered = False
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
        if self._response == _COMPLETE:
            if self.disconnected:
                # Unless what completes it is the 499 of a middleware inside this one.
                answered = not self.stopper.standing_in
            elif self.deadline is not None:
                self._lift_deadline()
        if forward:
            # The response counts as complete before the final send returns: a server may
            # report the disconnect that follows a complete response while that send is
            # still flushing.
            try:
                await self._send(message)  # type: ignore[arg-type]
            except OSError:
                # ASGI 2.4: send() raises OSError once the client has gone. Cancelled at
                # once, the app is cancelled here; told first, it gets the server's word.
                self._response = before
                self._client_left()
                await self._take_cancellation()
                raise
        if answered:
            # Told, not yet stopped (a grace period): it answered after all, and what runs
            # from now on is work after the response, neither stopped nor cancelled.
            self.stopper.finish()
            self._spare_app()

    async def answer_for_the_app(self, around: Stop | None = None) -> None:
        """End an exchange whose app was stopped before completing its response.

        After a deadline the client is still there: it gets a 504, or, when the response
        had started, a response cut short (see :meth:`_cut`). After the client left nobody
        receives the answer: the server drops what is sent after the client left. It is for
        what wraps the middleware, which may count an app that returns without a response
        as an error (Starlette's ``BaseHTTPMiddleware`` raises "No response returned.").
        499 is the status proxies log for a client that closed the request.

        :param around: the stopper of the request that a middleware around this one serves,
            if any.
        """
        # What reached the server, not what the app sent after its client had left.
        response = self._response if self._forwarded is None else self._forwarded
        if response != _NONE:
            if self.cause is Cause.DEADLINE:
                self._cut()
            return
        if self.cause is Cause.DEADLINE:
            start, body = plain_response(504, b"Gateway Timeout\n")
        else:
            start, body = {"type": "http.response.start", "status": 499, "headers": []}, b""
        # A middleware around this one, in the same request (a router calling a sub-app behind
        # a middleware of its own), must not take this for its own app's answer: it would
        # spare that app the end of its grace period.
        if around is not None:
            around.standing_in = True
        try:
            await self._send(start)
            await self._send({"type": "http.response.body", "body": body})
        except OSError:
            pass  # ASGI 2.4: the client has gone
        finally:
            if around is not None:
                around.standing_in = False

    def _cut(self) -> None:
        """End a response that the deadline interrupted, so that the client sees it cut."""
        end_cut_response(self._send, self.scope.get("http_version"))

    def past_deadline(self) -> bool:
        """Whether the deadline has passed while the response was not complete."""
        deadline = self.deadline
        return (
            deadline is not None
            and self._response != _COMPLETE
            and not self._ended
            and time.monotonic() >= deadline
        )

    def time_left(self) -> float:
        """Seconds until the deadline: inf for none (or once the response is complete)."""
        deadline = self.deadline
        if deadline is None or self._response == _COMPLETE:
            return math.inf
        return max(0.0, deadline - time.monotonic())

    async def wait_disconnected(self) -> None:
        if self.disconnected or self._ended or self.failure is not None:
            return
        if self._gone is None:
            self._gone = anyio.Event()
        gone = self._gone
        self._ensure_watcher()
        await gone.wait()

    # -- the watcher ---------------------------------------------------------------------

    async def watch(self) -> None:
        try:
            while not self.disconnected and not self._ended and self.failure is None:
                if self._busy or not self._may_read_ahead():
                    await self._change().wait()
                    continue
                self._busy = True
                try:
                    message = await self._receive()
                finally:
                    self._busy = False
                kind = self._observe(message)
                if kind != _DISCONNECT:
                    size = _body_size(message) if kind == "http.request" else 0
                    if self._buffer is None:
                        # A list, made on first use: it holds a few messages at most, and a
                        # long poll that reads nothing pays for none.
                        self._buffer = []
                    self._buffer.append((message, size))
                    self._buffered += size
                self._notify()
        except Exception as exc:
            self._broken(exc)

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
            body = message.get("body", b"")
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"the server's receive() returned {message!r}, whose body is not bytes"
                )
            if not message.get("more_body", False):
                self._body_complete = True
        elif kind == _DISCONNECT:
            self._client_left()
        return kind

    def _deadline_passed(self) -> None:
        # Too late for the app's answer: it is told, or cancelled, as if the client had left.
        if not self.disconnected and self._response != _COMPLETE and not self._ended:
            self.cause = Cause.DEADLINE
            self._client_left()

    def _client_left(self) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        if self._gone is not None:
            self._gone.set()
        self._notify()
        if self._response == _COMPLETE or self._ended:
            return  # nothing is lost: work after the response runs to its end
        self._note_phase()
        # The app awaits receive() after its body, or in a body reader that handles the
        # disconnect: it listens for it itself (Django, Quart, Starlette's streaming responses)
        # and now has it. Cancelling it at once would cut through its own clean-up: Django's
        # and Quart's handlers would orphan the tasks they wait for. A grace period still
        # bounds how long it may take, except for Django >= 5, which stops itself.
        if self.stops_itself or (self._listening and not self._grace_period):
            if self.deadline is not None:
                self._lift_deadline()  # nor may a deadline cancel it now
            # What its threads run is stopped all the same, after the grace period: Django
            # cancels its view's coroutine, and the statement the view's thread runs goes on.
            self._stop_after(self._grace_period)
            return
        self._cancel_app(self._grace_period)
        delay = self._grace_period
        if delay and self.deadline is not None and self.cause is Cause.CLIENT_LEFT:
            # A deadline still to come cuts the grace period short, as it does the app's.
            delay = min(delay, max(0.0, self.deadline - time.monotonic()))
        self._stop_after(delay)

    def _stop_after(self, delay: float) -> None:
        if delay:
            self._call_later(delay, self._stop)
        else:
            self._stop()

    def _stop(self) -> None:
        # Not once the response is complete: the app answered in its grace period, and what
        # runs now is work after the response.
        if self._response != _COMPLETE and not self._ended:
            self.stopper.stop()

    def _note_phase(self) -> None:
        if not self._body_complete:
            self.phase = Phase.BODY
        elif self._response == _NONE:
            self.phase = Phase.WORKING
        else:
            self.phase = Phase.STREAMING
        self.left_after = time.monotonic() - self._started_at

    def _broken(self, exc: Exception) -> None:
        # The channel is broken: every later receive() says so rather than hang, and
        # nothing waits for a disconnect that can no longer be heard.
        self.failure = exc
        if self._gone is not None:
            self._gone.set()
        self._notify()

    def _change(self) -> anyio.Event:
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()


class Ticker:
    """Starts watchers, on one event loop, for the requests that outlive a tick.

    Most requests end within a millisecond. A watcher task for each, or even a callback of
    its own, would cost more than such a request: instead each request joins a generation,
    and one timer per loop starts watchers for the requests still running one to two ticks
    after they began. A client that leaves sooner is noticed at most two ticks late.

    A request leaves its generation when it ends: what it held is freed then, by reference
    counting, and not kept for up to two ticks, where under load it would count towards the
    garbage collector's next run.
    """

    exchange_class: type[Exchange]

    def __init__(self, loop: object) -> None:
        #: What tells this ticker's event loop from another: the loop, or trio's token.
        self.loop = loop
        # Dicts as ordered sets: O(1) to leave, in any order.
        self._young: dict[Exchange, None] = {}
        self._old: dict[Exchange, None] = {}
        self._armed = False

    def add(self, exchange: Exchange) -> None:
        self._young[exchange] = None
        if not self._armed:
            self._armed = True
            self._arm()

    def remove(self, exchange: Exchange) -> None:
        if self._young.pop(exchange, _ABSENT) is _ABSENT:
            self._old.pop(exchange, None)

    def _arm(self) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        old = self._old
        self._old = self._young
        self._young = {}
        for exchange in old:
            exchange.outlived_tick()
        self._armed = bool(self._old)


_ABSENT = object()


def plain_response(status: int, body: bytes) -> tuple[Message, bytes]:
    """The start of a short text response of the middleware's own, and its body."""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    return {"type": "http.response.start", "status": status, "headers": headers}, body


def _body_size(message: Message) -> int:
    return len(message.get("body", b""))  # bytes: _observe() saw to it


#: Whether a server's send() may raise OSError once the client has gone, by the spec version
#: it says it follows: a server says the same for every request, in a handful of spellings.
_RAISES: dict[str, bool] = {}


def _send_raises(scope: Scope) -> bool:
    """Whether the server's ``send()`` may raise ``OSError`` once the client has gone: from
    ASGI 2.4 on, as the spec says."""
    try:
        return _RAISES[scope["asgi"]["spec_version"]]
    except Exception:
        pass
    raises = _spec_version(scope) >= (2, 4)
    try:
        version = scope["asgi"]["spec_version"]
    except Exception:
        return raises
    if isinstance(version, str) and len(_RAISES) < 64:
        _RAISES[version] = raises
    return raises


def _spec_version(scope: Scope) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in scope["asgi"]["spec_version"].split("."))
    except Exception:
        return (2, 0)  # the spec's default, and what a malformed version is taken for


def _expects_continue(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"expect" and value.strip().lower() == b"100-continue":
            return True
    return False
