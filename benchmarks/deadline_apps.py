"""The endpoints of ``deadlines.py``, behind each way of giving requests a deadline.

``DEADLINE_WAY`` picks the way; each handler appends ``<id> <event> <monotonic>`` lines to
the file named by ``DEADLINE_EVENTS``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

#: The budget every way gives a request, in seconds.
BUDGET = 1.0


def record(rid: str, event: str) -> None:
    with open(os.environ["DEADLINE_EVENTS"], "a") as events:
        events.write(f"{rid} {event} {time.monotonic():.6f}\n")


async def slow(request: Request) -> Response:
    rid = request.query_params["id"]
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        record(rid, "cancelled")
        raise
    record(rid, "finished")
    return PlainTextResponse("done")


async def stream(request: Request) -> Response:
    rid = request.query_params["id"]

    async def tokens() -> Any:
        try:
            for index in range(30):
                yield b"data: %d\n\n" % index
                await asyncio.sleep(0.1)
        except (asyncio.CancelledError, GeneratorExit):
            record(rid, "cancelled")
            raise
        record(rid, "finished")

    return StreamingResponse(tokens(), media_type="text/event-stream")


async def background(request: Request) -> Response:
    rid = request.query_params["id"]

    async def work() -> None:
        try:
            await asyncio.sleep(2)
        except asyncio.CancelledError:
            record(rid, "background-cancelled")
            raise
        record(rid, "background-finished")

    return PlainTextResponse("accepted", background=BackgroundTask(work))


def blocking(request: Request) -> Response:
    time.sleep(5)  # what gunicorn's worker timeout is for: a stuck loop
    return PlainTextResponse("done")


async def blocking_async(request: Request) -> Response:
    return blocking(request)


routes = [
    Route("/slow", slow),
    Route("/stream", stream),
    Route("/background", background),
    Route("/blocking", blocking_async),
]


class WaitFor:
    """The usual ASGI middleware: the whole app under asyncio.wait_for()."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self.app(scope, receive, send), BUDGET)
        except asyncio.TimeoutError:
            await send({"type": "http.response.start", "status": 504, "headers": []})
            await send({"type": "http.response.body", "body": b"Gateway Timeout"})


async def wait_for_call_next(request: Request, call_next: Any) -> Response:
    # The usual FastAPI recipe.
    try:
        return await asyncio.wait_for(call_next(request), BUDGET)  # type: ignore[no-any-return]
    except asyncio.TimeoutError:
        return JSONResponse({"detail": "timeout"}, status_code=504)


def build() -> Any:
    way = os.environ.get("DEADLINE_WAY", "asgi_disconnect")
    if way == "wait_for_call_next":
        app = Starlette(routes=routes)
        app.add_middleware(BaseHTTPMiddleware, dispatch=wait_for_call_next)
        return app
    app = Starlette(routes=routes)
    if way == "wait_for":
        return WaitFor(app)
    if way == "asgi_disconnect":
        from asgi_disconnect import DisconnectMiddleware

        return DisconnectMiddleware(app, timeout=BUDGET)
    return app  # bare: gunicorn's worker timeout is the only bound


app = build()
