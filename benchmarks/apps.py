"""The apps that the server benchmarks run under uvicorn, bare and wrapped.

``BENCH_MIDDLEWARE`` names the middleware that the ``wrapped_*`` apps use: this project's
(the default) or ``fastapi_disconnect``, the reference peer.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

Scope = dict[str, Any]

START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain")],
}
HELLO = {"type": "http.response.body", "body": b"Hello, world!"}


def wrap(app: Any) -> Any:
    middleware = os.environ.get("BENCH_MIDDLEWARE", "asgi_disconnect")
    if middleware == "fastapi_disconnect":
        from fastapi_disconnect import CancelOnDisconnectMiddleware  # type: ignore[import-not-found]

        return CancelOnDisconnectMiddleware(app)
    from asgi_disconnect import DisconnectMiddleware

    return DisconnectMiddleware(app)


async def hello(scope: Scope, receive: Any, send: Any) -> None:
    await send(START)
    await send(HELLO)


async def awaits_once(scope: Scope, receive: Any, send: Any) -> None:
    await asyncio.sleep(0)
    await send(START)
    await send(HELLO)


async def homepage(request: Any) -> PlainTextResponse:
    return PlainTextResponse("Hello, world!")


starlette_hello = Starlette(routes=[Route("/", homepage)])

# Request id -> time.monotonic() when its handler was cancelled. CLOCK_MONOTONIC is shared by
# the processes of one machine, so the client's clock and the server's can be compared.
CANCELLED: dict[str, float] = {}


async def abandoned(scope: Scope, receive: Any, send: Any) -> None:
    if scope["path"] == "/results":
        body = json.dumps(CANCELLED).encode()
        CANCELLED.clear()
        await send(START)
        await send({"type": "http.response.body", "body": body})
        return
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        CANCELLED[scope["query_string"].decode()] = time.monotonic()
        raise
    await send(START)
    await send(HELLO)


wrapped_hello = wrap(hello)
wrapped_awaits_once = wrap(awaits_once)
wrapped_starlette_hello = wrap(starlette_hello)
wrapped_abandoned = wrap(abandoned)
