"""Django behind the middleware, whatever sits in between (Channels, Sentry, OpenTelemetry).

Django tells the middleware that it serves a request: it sends ``request_started`` with the
scope it was given, which carries the middleware's state. Its body reader is recognised too
(:func:`note_readers`), and is handed the disconnect: it closes its body file when told, and
is left with it open when cancelled.

- Django >= 5.0 listens for the disconnect itself and cancels its view when it hears it.
  Once it has read its body it is told of the disconnect and never cancelled from outside:
  that would leave the task running its view orphaned, and ``request_finished`` unsent.
- Django < 5.0 never listens after the body, so the middleware cancels it. It fires
  ``request_finished`` (which closes database connections) and closes the request, its body
  file and its response only once the response has been sent, so the middleware does all of
  it for a request it cancelled, in the request's own thread, where its connections live.
"""

from __future__ import annotations

import sys
from asyncio import CancelledError
from contextvars import ContextVar
from types import CodeType, TracebackType
from typing import Any

import anyio

from ._exchange import LISTENING_READERS, SCOPE_KEY, STOPPING_READERS, Exchange
from ._types import AppScope, AppSend, Receive, WrappedApp


class _Request:
    """What the middleware must finish for Django < 5, for a request it cancelled."""

    __slots__ = ("finished", "handler")

    def __init__(self) -> None:
        #: The handler that sent ``request_started``, to send ``request_finished`` as.
        self.handler: Any = None
        self.finished = False


# The request being served, as Django's threads see it (Django < 5 only). In a list emptied when
# the request ends: copies of the context outlive it (a cancelled timer keeps its context
# until its time comes), and must not keep the request's state alive.
_current: ContextVar[list[_Request] | None] = ContextVar("asgi_disconnect_django", default=None)


def note_readers() -> None:
    """Note Django's body reader, if this process serves Django.

    Once it has read the body, Django >= 5 listens for the disconnect and stops its view
    itself: cancelling it from outside would orphan the task running the view.
    """
    # Without importing Django: a process that serves it has imported its ASGI handler.
    handlers = sys.modules.get("django.core.handlers.asgi")
    if handlers is None:
        return
    read_body = handlers.ASGIHandler.read_body.__code__
    LISTENING_READERS.add(read_body)
    if sys.modules["django"].VERSION >= (5, 0):
        STOPPING_READERS.add(read_body)


def attach(app: WrappedApp) -> WrappedApp:
    """Hook Django's signals if this process serves Django; ``app``, adapted for Django < 5."""
    # Without importing Django: a process that serves it has imported its ASGI handler.
    if "django.core.handlers.asgi" not in sys.modules:
        return app
    import django
    from django.core.handlers.asgi import ASGIHandler
    from django.core.signals import request_finished, request_started

    from ._django_db import hook

    hook()
    if django.VERSION >= (5, 0):
        request_started.connect(_started_listening, weak=False, dispatch_uid=_started_listening)
        return app
    request_started.connect(_started, weak=False, dispatch_uid=_started)
    request_finished.connect(_finished, weak=False, dispatch_uid=_finished)
    return _FinishOnCancel(app, ASGIHandler)


def _exchange_of(scope: Any) -> Exchange | None:
    exchange = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    # None for a WSGI request, or one the middleware left alone.
    return exchange if isinstance(exchange, Exchange) else None


def _started_listening(sender: Any, scope: Any = None, **kwargs: Any) -> None:
    # Django >= 5, in its thread for the request: from here on it listens for the disconnect.
    exchange = _exchange_of(scope)
    if exchange is not None:
        exchange.stops_itself = True


def _started(sender: Any, scope: Any = None, **kwargs: Any) -> None:
    # Django < 5, in its thread for the request, before it creates the request.
    if _exchange_of(scope) is not None:  # one the middleware serves, in this context
        for request in _current.get() or ():
            request.handler = sender


def _finished(sender: Any, **kwargs: Any) -> None:
    for request in _current.get() or ():
        request.finished = True


class _FinishOnCancel:
    def __init__(self, app: WrappedApp, handler: type[Any]) -> None:
        self.app = app
        # Where Django holds what a cancelled request leaves open.
        self._frames = (handler.handle.__code__, handler.read_body.__code__)

    async def __call__(self, scope: AppScope, receive: Receive, send: AppSend) -> None:
        from asgiref.sync import ThreadSensitiveContext, sync_to_async

        exchange: Exchange = scope[SCOPE_KEY]
        # Django 4.2 answers a fast view before the ticker would start a watcher; Django
        # >= 5 listens as soon as the body is in, and so does the middleware for 4.2.
        exchange.listens_after_body = True
        # Django's own context, entered first, so that it outlives Django's handler:
        # request_finished must run in the thread that holds the request's connections.
        async with ThreadSensitiveContext():
            current = [_Request()]
            token = _current.set(current)
            try:
                try:
                    await self.app(scope, receive, send)
                    return
                except CancelledError as exc:
                    cancelled = exc
                    left = _locals_in(exc.__traceback__, self._frames)
                # Out of the except clause: asgiref would keep the exception, and with it
                # this frame and the request, in a cycle only the garbage collector breaks.
                try:
                    # Shielded: the clean-up runs to its end, then the cancellation goes on.
                    with anyio.CancelScope(shield=True):
                        await sync_to_async(_finish, thread_sensitive=True)(current[0], left)
                    raise cancelled
                finally:
                    del cancelled, left
            finally:
                _current.reset(token)
                current.clear()


def _locals_in(traceback: TracebackType | None, codes: tuple[CodeType, ...]) -> dict[str, Any]:
    """The local variables of the frames running ``codes``, the outermost winning."""
    found: dict[str, Any] = {}
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code in codes:
            found = {**frame.f_locals, **found}
        traceback = traceback.tb_next
    return found


def _finish(request: _Request, left: dict[str, Any]) -> None:
    # In the request's thread, after whatever still runs there (a sync view cannot be
    # cancelled, and may yet read its body).
    from django.core.signals import request_finished

    response = left.get("response")
    if response is not None:
        # Cancelled mid-stream: closing the response closes what it sends (a file) and the
        # request, and fires request_finished.
        response.close()
    if request.handler is not None and not request.finished:
        request_finished.send(sender=request.handler)
    # The request closes its body file and its uploads; before it exists, the body file is
    # all there is.
    closable = left.get("request") or left.get("body_file")
    if closable is not None:
        closable.close()
