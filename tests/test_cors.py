"""The middleware's own answers (504 at a deadline, 503 for a request that queued past it)
reach a page on another origin as what they are: with Starlette's (and FastAPI's)
``CORSMiddleware`` outside the middleware, they carry its headers, as the Quickstart stacks them.
Inside it, they could not: CORS adds its headers in the ``send`` it hands the app it wraps."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from apps import Record, slow_app
from communicator import communicate, http_scope
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_disconnect import ASGIApp, DisconnectMiddleware, Message, Scope

pytestmark = pytest.mark.anyio

PAGE = "https://page.example"
CORS: dict[str, Any] = {"allow_origins": [PAGE]}


async def report(request: Request) -> PlainTextResponse:
    await anyio.sleep(float(request.query_params.get("seconds", "30")))
    return PlainTextResponse("report")


def cross_origin(**extra: Any) -> Scope:
    headers = [(b"host", b"api.example"), (b"origin", PAGE.encode()), *extra.pop("headers", [])]
    return http_scope(method="GET", path="/report", raw_path=b"/report", headers=headers, **extra)


def starlette(*, cors_outside: bool, **options: Any) -> ASGIApp:
    middleware = [Middleware(CORSMiddleware, **CORS), Middleware(DisconnectMiddleware, **options)]
    if not cors_outside:
        middleware.reverse()
    return Starlette(routes=[Route("/report", report)], middleware=middleware)


def fastapi(**options: Any) -> ASGIApp:
    app = FastAPI()
    app.add_api_route("/report", report)
    # add_middleware puts each one outside those added before it.
    app.add_middleware(DisconnectMiddleware, **options)
    app.add_middleware(CORSMiddleware, **CORS)
    return app


def wrapped(record: Record | None = None, **options: Any) -> ASGIApp:
    # Around an app that handles CORS itself, or none: Starlette's, around any ASGI app.
    app = slow_app(record or Record())
    return CORSMiddleware(DisconnectMiddleware(app, **options), **CORS)


def allowed(start: Message) -> bytes | None:
    return dict(start["headers"]).get(b"access-control-allow-origin")


@pytest.mark.parametrize(
    "make",
    [lambda **o: starlette(cors_outside=True, **o), fastapi, wrapped],
    ids=["starlette", "fastapi", "around-any-app"],
)
async def test_the_504_of_a_deadline_carries_cors_headers_with_cors_outside(make: Any) -> None:
    async with communicate(make(timeout=0.05), cross_origin()) as c:
        await c.send_body(b"")
        await c.wait()
    start, body = c.sent
    assert start["status"] == 504 and body["body"] == b"Gateway Timeout\n"
    assert allowed(start) == PAGE.encode()


@pytest.mark.parametrize(
    "make",
    [lambda **o: starlette(cors_outside=True, **o), fastapi, wrapped],
    ids=["starlette", "fastapi", "around-any-app"],
)
async def test_the_503_of_a_queued_request_carries_cors_headers_with_cors_outside(
    make: Any,
) -> None:
    stamp = b"t=%d" % round((time.time() - 5) * 1000)
    app = make(timeout=2, request_start_header="x-request-start")
    async with communicate(app, cross_origin(headers=[(b"x-request-start", stamp)])) as c:
        pass
    start, _ = c.sent
    assert start["status"] == 503
    assert allowed(start) == PAGE.encode()


async def test_a_normal_response_is_cors_s_either_way() -> None:
    for cors_outside in (True, False):
        app = starlette(cors_outside=cors_outside, timeout=5)
        async with communicate(app, cross_origin(query_string=b"seconds=0")) as c:
            await c.send_body(b"")
        assert c.sent[0]["status"] == 200
        assert allowed(c.sent[0]) == PAGE.encode()


async def test_with_cors_inside_the_504_has_no_cors_headers() -> None:
    # Why the Quickstart puts CORS outside: the page would see a CORS error, not the 504.
    async with communicate(starlette(cors_outside=False, timeout=0.05), cross_origin()) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.sent[0]["status"] == 504
    assert allowed(c.sent[0]) is None


async def test_with_cors_outside_a_client_that_leaves_still_cancels_the_handler() -> None:
    record = Record()
    async with communicate(wrapped(record), cross_origin()) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled"]


async def test_a_preflight_is_answered_by_cors_and_never_reaches_the_middleware() -> None:
    preflight = cross_origin(headers=[(b"access-control-request-method", b"GET")])
    preflight["method"] = "OPTIONS"
    async with communicate(starlette(cors_outside=True, timeout=0.05), preflight) as c:
        await c.send_body(b"")
    assert c.sent[0]["status"] == 200
    assert allowed(c.sent[0]) == PAGE.encode()
