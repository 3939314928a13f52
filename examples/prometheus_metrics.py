"""Count abandoned requests per route with Prometheus, and the work their cancellation saved.

uvicorn examples.prometheus_metrics:app    (the metrics are at /metrics)

``on_disconnect`` is called once per abandoned request, after its app has stopped, with the
scope the app saw: Starlette's routing has put the matched route there, so the series are
labelled by the route's template (``/reports/{report_id}``), never by the raw path, which
would make one series per id.

The work saved is an estimate: how long the route's completed requests take on average, less
how long the abandoned one had run when its client left.
"""

from __future__ import annotations

import time

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_disconnect import ASGIApp, Disconnect, DisconnectMiddleware, Receive, Scope, Send

registry = CollectorRegistry()
ABANDONED = Counter(
    "http_requests_abandoned",
    "Requests stopped before the response was complete: the client left, or the deadline passed",
    ["route", "phase", "cause"],
    registry=registry,
)
SAVED = Counter(
    "http_request_work_saved_seconds",
    "Estimated seconds of work not done for clients that had left",
    ["route"],
    registry=registry,
)

# Per route: seconds taken by the requests that completed, and how many there were.
completed: dict[str, tuple[float, int]] = {}


def route_of(scope: Scope) -> str:
    return str(getattr(scope.get("route"), "path", "unmatched"))


def count(disconnect: Disconnect) -> None:
    route = route_of(disconnect.scope)
    ABANDONED.labels(route, disconnect.phase.value, disconnect.cause.value).inc()
    seconds, requests = completed.get(route, (0.0, 0))
    if requests:
        SAVED.labels(route).inc(max(0.0, seconds / requests - disconnect.elapsed))


class TimeCompleted:
    """Times the requests that complete, by route: what the estimate of work saved is from."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        await self.app(scope, receive, send)  # a cancelled request raises: it is not timed
        if scope["type"] == "http":
            route = route_of(scope)
            seconds, requests = completed.get(route, (0.0, 0))
            completed[route] = (seconds + time.monotonic() - started, requests + 1)


async def report(request: Request) -> JSONResponse:
    await anyio.sleep(float(request.query_params.get("seconds", "3")))  # slow work
    return JSONResponse({"report": request.path_params["report_id"]})


async def metrics(request: Request) -> Response:
    # A route of its own rather than prometheus_client's ASGI app under Mount("/metrics"),
    # which answers /metrics with a redirect to /metrics/.
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


app = DisconnectMiddleware(
    Starlette(
        routes=[Route("/reports/{report_id}", report), Route("/metrics", metrics)],
        middleware=[Middleware(TimeCompleted)],
    ),
    on_disconnect=count,
)
