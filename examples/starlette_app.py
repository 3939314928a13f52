"""Starlette: wrap the app, or add the middleware outermost.

uvicorn examples.starlette_app:app
"""

from __future__ import annotations

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_disconnect import DisconnectMiddleware


async def report(request: Request) -> JSONResponse:
    await anyio.sleep(float(request.query_params.get("seconds", "3")))  # slow work
    return JSONResponse({"report": "ready"})


app = Starlette(
    routes=[Route("/report", report)],
    middleware=[Middleware(DisconnectMiddleware, grace_period=0.0)],
)
