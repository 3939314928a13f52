from __future__ import annotations

import inspect
import logging
import sys
from asyncio import AbstractEventLoop, get_running_loop
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from typing import Any, cast

from anyio import get_cancelled_exc_class

from ._deadline import Timeout, check_seconds, header_name, header_timeout, queued_for, timeout_for
from ._django import attach
from ._django import note_readers as note_django_readers
from ._exchange import (
    SCOPE_KEY,
    Cause,
    Disconnect,
    Exchange,
    Phase,
    Ticker,
    plain_response,
)
from ._otel import record as record_on_span
from ._portable import asyncio_ticker_class
from ._quart import note_readers as note_quart_readers
from ._sqlalchemy import hook_if_imported
from ._stop import Stop, StopHandle, run_callback
from ._stop import current as current_stop
from ._types import ASGIApp, Receive, Scope, Send, WrappedApp

logger = logging.getLogger("asgi_disconnect")

OnDisconnect = Callable[[Disconnect], Awaitable[None] | None]


class DisconnectMiddleware:
    """Stop the app when the client goes away before its response is complete.

    ASGI servers report a lost client as ``http.disconnect``, but only to an app that calls
    ``receive()``, and few apps do while they work. This middleware is the one reader of
    the server's ``receive``: it reads a little ahead of the app, watches for the
    disconnect, and cancels the app when it comes. A disconnect after the response is
    complete cancels nothing, so work after the response (background tasks) runs to its
    end.

    :param app: the ASGI application to wrap.
    :param grace_period: seconds an app that has been told of the disconnect may go on
        before it is cancelled.
    :param read_ahead: how many bytes of request body the middleware may read ahead of
        the app, so that a client leaving is noticed while the app has not read its body.
    :param on_disconnect: called, sync or async, with a ``Disconnect`` once the app
        of an abandoned request has stopped; what it raises is logged.
    :param exclude_paths: path prefixes whose requests are passed on untouched.
    :param exclude: a predicate on the scope; requests it accepts are passed on untouched.
    :param timeout: seconds a request may take, from when the middleware receives it, or a
        callable that gives them for a scope (None: no deadline for that request). When
        the deadline passes before the response is complete, the app is stopped as if its
        client had left, and the client gets a 504, or a response visibly cut short.
    :param timeout_header: a request header in which the proxy in front says how many
        milliseconds it will wait (Envoy's ``x-envoy-expected-rq-timeout-ms``). The deadline
        is the earlier of the two; values that are not a positive number are ignored.
    :param request_start_header: a request header in which the proxy in front stamps when it
        received the request (``x-request-start``: ``t=`` and seconds, milliseconds,
        microseconds or nanoseconds since the epoch, told apart by their magnitude). The time
        since then counts against the deadline, and a request already past it is answered 503
        without calling the app. It needs ``timeout`` or ``timeout_header``: without a
        deadline there is nothing to count against.
    :param clock_skew: seconds by which the proxy's clock may be behind this machine's: that
        much of the time since the proxy's stamp is not counted.
    :param cancel_statements: when a request is stopped, cancel on the database server the
        statement that its threads are running (Django's ORM, SQLAlchemy's sync engines), as
        cancelling a coroutine cancels an async driver's.
    :raises TypeError: when an option is of the wrong type (a bool is not a number, a str is
        not a collection of paths).
    :raises ValueError: when an option has a wrong value; when ``request_start_header`` is
        given without ``timeout`` or ``timeout_header``; when ``app`` is a
        ``DisconnectMiddleware`` with other options, which it would ignore.
    """

    def __init__(
        self,
        app: WrappedApp,
        *,
        grace_period: float = 0.0,
        read_ahead: int = 65536,
        on_disconnect: OnDisconnect | None = None,
        exclude_paths: Iterable[str] = (),
        exclude: Callable[[Scope], bool] | None = None,
        timeout: Timeout = None,
        timeout_header: str | None = None,
        request_start_header: str | None = None,
        clock_skew: float = 1.0,
        cancel_statements: bool = True,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI application (a callable), not {app!r}")
        grace_period = check_seconds("grace_period", grace_period, zero=True)
        if isinstance(read_ahead, bool) or not isinstance(read_ahead, int):
            raise TypeError(f"read_ahead must be a whole number of bytes, not {read_ahead!r}")
        if read_ahead < 0:
            raise ValueError(f"read_ahead must be a whole number of bytes >= 0, not {read_ahead!r}")
        if on_disconnect is not None and not callable(on_disconnect):
            raise TypeError(f"on_disconnect must be callable, not {on_disconnect!r}")
        if exclude is not None and not callable(exclude):
            raise TypeError(f"exclude must be a callable taking the scope, not {exclude!r}")
        if timeout is not None and not callable(timeout):
            timeout = check_seconds("timeout", timeout)
        if not isinstance(cancel_statements, bool):
            raise TypeError(f"cancel_statements must be True or False, not {cancel_statements!r}")
        self.cancel_statements = cancel_statements
        self._timeout_header = header_name("timeout_header", timeout_header)
        self._request_start_header = header_name("request_start_header", request_start_header)
        self.clock_skew = check_seconds("clock_skew", clock_skew, zero=True)
        if request_start_header is not None and timeout is None and timeout_header is None:
            # The time a request waited counts against a deadline: without one it counts
            # against nothing, and the header would be read for no effect.
            raise ValueError(
                "request_start_header needs a deadline to count against: give timeout or "
                "timeout_header too"
            )
        self._prefixes = _path_prefixes(exclude_paths)
        self.timeout = timeout
        self.timeout_header = timeout_header
        self.request_start_header = request_start_header
        self._deadlines = timeout is not None or timeout_header is not None
        options = {
            "grace_period": grace_period,
            "read_ahead": read_ahead,
            "on_disconnect": on_disconnect,
            "exclude_paths": self._prefixes,
            "exclude": exclude,
            "timeout": timeout,
            "timeout_header": timeout_header,
            "request_start_header": request_start_header,
            "clock_skew": self.clock_skew,
            "cancel_statements": cancel_statements,
        }
        self._options = options
        # What this middleware would leave undone inside another one, which serves the
        # request (see __call__): the options it was given.
        self._ignored = ", ".join(
            f"{name}={value!r}" for name, value in options.items() if value != _DEFAULTS[name]
        )
        if isinstance(app, DisconnectMiddleware):
            # The outer one serves every request, and the inner one hands them on: only one
            # set of options can hold. The same options twice hold as once.
            if app._options != options:
                differences = ", ".join(
                    f"{name}={value!r} inside, {options[name]!r} outside"
                    for name, value in app._options.items()
                    if value != options[name]
                )
                raise ValueError(
                    f"app is a DisconnectMiddleware with other options ({differences}): the "
                    "outer one serves every request, and the inner one's options would be "
                    "ignored; give one DisconnectMiddleware all the options"
                )
            app = app.app  # which is never a DisconnectMiddleware itself
        self.app: WrappedApp = app
        # Requests the middleware leaves alone get the server's own scope, receive and send.
        self._untouched = cast(ASGIApp, app)
        self._wrapped = app
        self._imported = 0
        self._look_for_frameworks()
        self.grace_period = grace_period
        self.read_ahead = read_ahead
        self.on_disconnect = on_disconnect
        self.exclude = exclude
        self._excluding = bool(self._prefixes) or exclude is not None
        # One per event loop; the middleware normally serves one loop for its whole life.
        self._ticker: Ticker | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            kind = scope["type"]
        except Exception:
            raise TypeError(
                f"the server called the middleware with {scope!r}, which is not an ASGI scope "
                "(a mapping with a 'type' key)"
            ) from None
        if kind != "http" or SCOPE_KEY in scope or (self._excluding and self._excluded(scope)):
            if self._ignored and kind == "http" and SCOPE_KEY in scope:
                self._nested(scope)
            await self._untouched(scope, receive, send)
            return

        budget = None
        if self._deadlines:
            budget = self._budget(scope)
            if budget is not None and budget <= 0:
                await self._too_late(scope, send)
                return
        if len(sys.modules) != self._imported:
            self._look_for_frameworks()
        try:
            loop: object = get_running_loop()
        except RuntimeError:
            from ._trio import current_token

            loop = current_token()
        ticker = self._ticker
        if ticker is None or ticker.loop is not loop:
            ticker = self._ticker = _ticker_for(loop)
        stopper = Stop(self.cancel_statements)
        # Before the exchange copies the context for its watcher and timers.
        token = current_stop.set(stopper)
        exchange = ticker.exchange_class(
            scope, receive, send, self.read_ahead, self.grace_period, ticker, budget, stopper
        )
        app_scope = {**scope, SCOPE_KEY: exchange}
        failed = True
        disconnect = None
        try:
            await exchange.run(self._wrapped, app_scope)
            if exchange.phase is not None:
                disconnect = Disconnect(
                    app_scope, exchange.phase, exchange.left_after, exchange.cause
                )
                # Before the answer: OpenTelemetry's middleware ends its span on the last
                # message of a response.
                record_on_span(disconnect)
                around = token.old_value
                await exchange.answer_for_the_app(around if isinstance(around, Stop) else None)
            failed = False
        finally:
            current_stop.reset(token)
            if exchange.phase is not None:
                if disconnect is None:  # the app raised: nothing is sent for it
                    disconnect = Disconnect(
                        app_scope, exchange.phase, exchange.left_after, exchange.cause
                    )
                    record_on_span(disconnect)
                if failed:
                    # What the app raised goes on: a cancellation from around the middleware
                    # that meets an async on_disconnect's await must not take its place.
                    with suppress(get_cancelled_exc_class()):
                        await self._report(disconnect)
                else:
                    await self._report(disconnect)
            if exchange.failure is not None and not exchange.failure_seen:
                logger.error(
                    "the server's receive() failed while the app was not reading",
                    exc_info=exchange.failure,
                    extra=log_fields(app_scope, disconnect),
                )

    def _nested(self, scope: Scope) -> None:
        # Inside another DisconnectMiddleware, with other middleware between the two (else
        # the outer one would have refused at construction): the outer one serves the
        # request, and this one's options do nothing. Said once, loudly.
        logger.warning(
            "a DisconnectMiddleware with options %s is inside another DisconnectMiddleware, "
            "which serves the request: these options are ignored; give the outer one all "
            "the options and remove this one",
            self._ignored,
            extra={**log_fields(scope), "ignored_options": self._ignored},
        )
        self._ignored = ""

    def _look_for_frameworks(self) -> None:
        # Django and Quart are recognised whenever they are imported: before the middleware is
        # built, as usual, or later, by an app that imports them on its first request.
        self._imported = len(sys.modules)
        self._wrapped = attach(self.app)
        note_django_readers()
        note_quart_readers()
        hook_if_imported()

    def _budget(self, scope: Scope) -> float | None:
        """Seconds this request may take from now, or None for no deadline."""
        budget = timeout_for(self.timeout, scope)
        if self._timeout_header is None and self._request_start_header is None:
            return budget
        limits: list[bytes] = []
        starts: list[bytes] = []
        for name, value in scope.get("headers", ()):
            name = name.lower()
            if name == self._timeout_header:
                limits.append(value)
            elif name == self._request_start_header:
                starts.append(value)
        if limits:
            limit = header_timeout(limits)
            if limit is not None and (budget is None or limit < budget):
                budget = limit
        if starts and budget is not None:
            budget -= queued_for(starts, self.clock_skew)
        return budget

    async def _too_late(self, scope: Scope, send: Send) -> None:
        # The proxy kept the request waiting past its deadline: whoever asked has stopped
        # waiting, or is about to. Nothing is read or run for it.
        disconnect = Disconnect(scope, Phase.QUEUED, 0.0, Cause.DEADLINE)
        record_on_span(disconnect)  # before the response, which ends OpenTelemetry's span
        start, body = plain_response(503, b"Service Unavailable\n")
        try:
            await send(start)
            await send({"type": "http.response.body", "body": body})
        except OSError:
            pass  # ASGI 2.4: the client has gone already
        await self._report(disconnect)

    def _excluded(self, scope: Scope) -> bool:
        if self._prefixes:
            path = scope.get("path", "")
            for prefix in self._prefixes:
                if path == prefix or path.startswith(prefix + "/"):
                    return True
        return self.exclude is not None and self.exclude(scope)

    async def _report(self, disconnect: Disconnect) -> None:
        scope = disconnect.scope
        fields = log_fields(scope, disconnect)
        # A client that leaves is routine; a deadline that passes is a request the app could
        # not answer in time.
        logger.log(
            logging.INFO if disconnect.cause is Cause.CLIENT_LEFT else logging.WARNING,
            "%s %s: %s while %s, %.3f s into the request",
            scope.get("method", "-"),
            scope.get("path", "-"),
            _CAUSES[disconnect.cause],
            _DESCRIPTIONS[disconnect.phase],
            disconnect.elapsed,
            extra=fields,
        )
        if self.on_disconnect is None:
            return
        try:
            result = self.on_disconnect(disconnect)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_disconnect raised", extra=fields)


def log_fields(scope: Scope, disconnect: Disconnect | None = None) -> dict[str, object]:
    """What every record the middleware logs carries as attributes (``extra=``).

    For structured logging (a JSON formatter, structlog's stdlib bridge) and for a format
    string's ``%(phase)s``: each key is always there, None when it does not apply. Nothing
    of the scope's headers or query string, which hold secrets.
    """
    route = getattr(scope.get("route"), "path", None)  # Starlette's and FastAPI's Route
    return {
        "method": scope.get("method"),
        "path": scope.get("path"),
        "route": route if isinstance(route, str) else None,
        "phase": None if disconnect is None else disconnect.phase.value,
        "cause": None if disconnect is None else disconnect.cause.value,
        "elapsed": None if disconnect is None else disconnect.elapsed,
    }


_DEFAULTS: dict[str, object] = {
    name: parameter.default
    for name, parameter in inspect.signature(DisconnectMiddleware.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}

_CAUSES = {
    Cause.CLIENT_LEFT: "client disconnected",
    Cause.DEADLINE: "deadline passed",
}

_DESCRIPTIONS = {
    Phase.QUEUED: "queued in front of the app",
    Phase.BODY: "reading the body",
    Phase.WORKING: "working",
    Phase.STREAMING: "streaming the response",
}


#: Checked once, at import: the fast path, or the portable one with a warning.
_AsyncioTicker = asyncio_ticker_class()


def _ticker_for(loop: object) -> Ticker:
    if isinstance(loop, AbstractEventLoop):
        return _AsyncioTicker(loop)
    from ._trio import TrioTicker

    return TrioTicker(loop)


def _path_prefixes(paths: object) -> tuple[str, ...]:
    # A str is iterable too, one character at a time: "/health" is refused for what it is, a
    # str where a collection of paths is wanted, rather than for its second character.
    if isinstance(paths, (str, bytes)) or not isinstance(paths, Iterable):
        raise TypeError(
            f"exclude_paths must be a collection of path prefixes (such as ['/health']), "
            f"not {paths!r}"
        )
    prefixes = []
    for path in paths:
        if not isinstance(path, str):
            raise TypeError(f"exclude_paths entries must be str paths, not {path!r}")
        if not path.startswith("/"):
            raise ValueError(f"exclude_paths entries must be paths starting with '/', not {path!r}")
        prefixes.append(path.rstrip("/"))
    return tuple(prefixes)


def exchange_of(scope: Mapping[str, Any]) -> Exchange:
    try:
        exchange = scope[SCOPE_KEY]
    except (KeyError, TypeError):
        raise ValueError(
            "this scope was not seen by DisconnectMiddleware: is the middleware installed, "
            "and is this request excluded?"
        ) from None
    if not isinstance(exchange, Exchange):
        raise ValueError(f"scope[{SCOPE_KEY!r}] holds {exchange!r}, not the middleware's state")
    return exchange


def is_disconnected(scope: Mapping[str, Any]) -> bool:
    """Tell whether the client of this request has gone, or its deadline has passed.

    Either way nobody will read what the app answers now. Safe to call from any thread, so
    that code which cannot be cancelled (a sync view in a thread, a CPU-bound loop) can stop
    on its own.

    :param scope: the request's scope, as the app received it.
    :raises ValueError: when the scope did not pass through ``DisconnectMiddleware``.
    """
    exchange = exchange_of(scope)
    return exchange.disconnected or exchange.past_deadline()


def time_left(scope: Mapping[str, Any]) -> float:
    """Seconds until this request's deadline: ``math.inf`` when it has none, 0 once passed.

    For code that cannot see anyio's ``current_effective_deadline()`` (sync code in a
    thread) and budgets its own waits: a database statement timeout, an HTTP client's.
    Safe to call from any thread. Once the response is complete the deadline no longer
    applies: work after the response (background tasks) has all the time it needs.

    :param scope: the request's scope, as the app received it.
    :raises ValueError: when the scope did not pass through ``DisconnectMiddleware``.
    """
    return exchange_of(scope).time_left()


async def wait_disconnected(scope: Mapping[str, Any]) -> None:
    """Return once the client of this request has gone, or nothing can hear it any more.

    That is: once the client has gone (or the request's deadline has passed); once the request
    is over (the app has returned, and work it left behind waits for nothing); or once the
    server's ``receive()`` has failed. ``is_disconnected`` then tells the first case from
    the others.

    :param scope: the request's scope, as the app received it.
    :raises ValueError: when the scope did not pass through ``DisconnectMiddleware``.
    """
    await exchange_of(scope).wait_disconnected()


def on_stop(callback: Callable[[], object], scope: Mapping[str, Any] | None = None) -> StopHandle:
    """Have ``callback`` called when this request is stopped, as Go's ``context.AfterFunc``.

    A request is stopped when its client has left, or its deadline has passed, before its
    response was complete, once the grace period (if any) is over. That is when the app is
    cancelled; work in threads cannot be, and this is how it stops what it waits for: a
    connection the app manages itself, a subprocess. Database statements run by Django's ORM
    and SQLAlchemy's sync engines are cancelled already (see ``cancel_statements``).

    The callback runs at most once, in the event loop's thread (it must not block), and
    never once the response is complete: work after the response runs to its end. Registered
    once the request has been stopped, it runs at once, in the caller's thread. What it
    raises is logged on the ``asgi_disconnect`` logger.

    Safe to call from any thread. Without ``scope``, the request is the one whose context
    the caller runs in: asgiref's ``sync_to_async`` and anyio's ``to_thread.run_sync`` carry
    it into their threads. Outside any request, the callback will never run, as for a
    context that is never done, and the handle that is returned does nothing.

    :param callback: called with no arguments.
    :param scope: the request's scope, as the app received it; by default the current
        request's.
    :returns: a handle whose ``unregister()`` takes the callback back.
    :raises TypeError: when ``callback`` is not callable.
    :raises ValueError: when ``scope`` did not pass through ``DisconnectMiddleware``.
    """
    if not callable(callback):
        raise TypeError(f"callback must be callable, not {callback!r}")
    stopper = current_stop.get() if scope is None else exchange_of(scope).stopper
    if stopper is None:
        return StopHandle(None)
    handle = stopper.register(callback)
    if handle is not None:
        return handle
    if stopper.stopped:
        run_callback(callback)
    return StopHandle(None)
