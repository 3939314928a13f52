"""An API on another origin than the page that calls it, for a real browser: the same slow
endpoint behind Starlette's ``CORSMiddleware`` outside the middleware (``/outside``), inside
it (``/inside``), and FastAPI's, added after it (``/fastapi``). Each request has a 0.5 s
deadline; ``PAGE_ORIGIN`` is the origin allowed."""

from __future__ import annotations

import os

import anyio
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_disconnect import DisconnectMiddleware, Receive, Scope, Send

CORS = Middleware(CORSMiddleware, allow_origins=[os.environ.get("PAGE_ORIGIN", "")])
DEADLINE = Middleware(DisconnectMiddleware, timeout=0.5)


async def report(request: Request) -> PlainTextResponse:
    await anyio.sleep(float(request.query_params.get("seconds", "30")))
    return PlainTextResponse("report")


outside = Starlette(routes=[Route("/outside", report)], middleware=[CORS, DEADLINE])
inside = Starlette(routes=[Route("/inside", report)], middleware=[DEADLINE, CORS])
fastapi = FastAPI()
fastapi.add_api_route("/fastapi", report)
fastapi.add_middleware(DisconnectMiddleware, timeout=0.5)
fastapi.add_middleware(CORSMiddleware, allow_origins=[os.environ.get("PAGE_ORIGIN", "")])

APPS = {"/outside": outside, "/inside": inside, "/fastapi": fastapi}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await outside(scope, receive, send)
        return
    await APPS[scope["path"]](scope, receive, send)
