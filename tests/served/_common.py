"""What every served app shares: the side channel, request ids and the dispatcher.

The tests never look inside the middleware: each app appends ``<id> <event> <monotonic time>``
lines to the file named by ``ASGI_DISCONNECT_EVENTS``. ``time.monotonic()`` is the same
clock in every process of the machine, so the tests can subtract their own times from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from asgi_disconnect._types import ASGIApp, Receive, Scope, Send

#: How long a handler that was told of the disconnect may go on, under ``/grace``.
GRACE = 0.5
#: How long a handler works when nobody stops it.
FOREVER = 30.0
#: How long work after the response takes.
AFTER = 0.5
#: The budget of requests under ``/deadline``: shorter than AFTER.
DEADLINE = 0.3


def record(request_id: str, event: str) -> None:
    path = os.environ.get("ASGI_DISCONNECT_EVENTS")
    if not path:
        return
    line = f"{request_id} {event} {time.monotonic():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines from several processes never mix
    finally:
        os.close(fd)


def request_id(scope: Mapping[str, Any]) -> str:
    query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
    return query.get("id", ["-"])[0]


@asynccontextmanager
async def recorded(rid: str) -> AsyncIterator[None]:
    """Record how the handler's work ended: finished, or stopped by an exception."""
    record(rid, "started")
    try:
        yield
    except BaseException as exc:
        # CancelledError, trio.Cancelled, GeneratorExit: whatever stopped the work.
        record(rid, "cancelled" if "Cancel" in type(exc).__name__ else "stopped")
        raise
    record(rid, "finished")


def dispatch(apps: Mapping[str, Callable[..., Awaitable[None]]]) -> ASGIApp:
    """Route ``/bare/...`` and ``/grace/...`` to other apps, with the prefix taken off.

    Every path goes through the same server and the same dispatcher, so a response from
    ``/hello`` and one from ``/bare/hello`` differ only by the middleware.
    """
    prefixes = sorted(apps, key=len, reverse=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path: str = scope["path"]
        for prefix in prefixes:
            if prefix and (path == prefix or path.startswith(prefix + "/")):
                scope = {**scope, "path": path[len(prefix) :] or "/"}
                if scope.get("raw_path"):
                    scope["raw_path"] = scope["raw_path"][len(prefix) :] or b"/"
                await apps[prefix](scope, receive, send)
                return
        await apps[""](scope, receive, send)

    return app
