"""The served endpoints in Litestar, behind the middleware at ``/``, bare at ``/bare``, with a
grace period at ``/grace``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar import Litestar, Request, get, post, route
from litestar.background_tasks import BackgroundTask
from litestar.response import Response, Stream

from asgi_disconnect import DisconnectMiddleware, is_disconnected, wait_disconnected

from ._common import AFTER, FOREVER, GRACE, dispatch, record, recorded, request_id

AnyRequest = Request[Any, Any, Any]


def text(body: bytes | str) -> Response[bytes | str]:
    return Response(body, status_code=200, media_type="text/plain")


@route("/hello", http_method=["GET", "POST"])
async def hello(request: AnyRequest) -> Response[bytes | str]:
    body = await request.body()
    response = text(b"hello " + body)
    response.headers["x-served-by"] = "litestar"
    return response


@route("/work", http_method=["GET", "POST"])
async def work(request: AnyRequest) -> Response[bytes | str]:
    async with recorded(request_id(request.scope)):
        await anyio.sleep(FOREVER)
    return text("done")


@get("/work-sync", sync_to_thread=True)
def work_sync(request: AnyRequest) -> Response[bytes | str]:
    # A thread cannot be cancelled: it checks between units of work.
    rid = request_id(request.scope)
    record(rid, "started")
    for _ in range(int(FOREVER / 0.01)):
        if is_disconnected(request.scope):
            record(rid, "stopped")
            return text("stopped")
        time.sleep(0.01)
    record(rid, "finished")
    return text("done")


@post("/upload")
async def upload(request: AnyRequest) -> Response[bytes | str]:
    rid = request_id(request.scope)
    size = 0
    async with recorded(rid):
        async for chunk in request.stream():
            size += len(chunk)
        record(rid, f"body:{size}")
    return text(f"got {size} bytes")


async def events(rid: str) -> AsyncIterator[bytes]:
    async with recorded(rid):
        for i in range(int(FOREVER / 0.02)):
            yield b"data: %d\n\n" % i
            await anyio.sleep(0.02)


@get("/stream")
async def stream(request: AnyRequest) -> Stream:
    return Stream(events(request_id(request.scope)), media_type="text/event-stream")


async def later(rid: str) -> None:
    await anyio.sleep(AFTER)
    record(rid, "after-done")


@get("/after")
async def after(request: AnyRequest) -> Response[bytes | str]:
    rid = request_id(request.scope)
    record(rid, "responded")
    return Response("responded", media_type="text/plain", background=BackgroundTask(later, rid))


@get("/grace")
async def grace(request: AnyRequest) -> Response[bytes | str]:
    rid = request_id(request.scope)
    record(rid, "started")
    await wait_disconnected(request.scope)
    record(rid, "told")
    try:
        await anyio.sleep(FOREVER)
    except anyio.get_cancelled_exc_class():
        record(rid, "cancelled")
        raise
    return text("done")  # pragma: no cover


def make() -> Litestar:
    return Litestar(route_handlers=[hello, work, work_sync, upload, stream, after, grace])


# Litestar types its ASGI callables with TypedDicts, which a plain dict scope cannot satisfy
# under mypy (see docs/faq.md).
app = dispatch(
    {
        "": DisconnectMiddleware(make()),
        "/bare": make(),
        "/grace": DisconnectMiddleware(make(), grace_period=GRACE),
    }
)
