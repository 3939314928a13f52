"""Trace requests with OpenTelemetry, and see in each span whether its client left.

    uvicorn examples.opentelemetry_tracing:app

OpenTelemetry's ASGI middleware goes around ``DisconnectMiddleware``: its span then covers
the whole request, the middleware's own answers (a 504 at the deadline) included, and is the
current span when the middleware stops a request. That span gets an event,
``asgi_disconnect.stopped`` (with the cause, the phase and the seconds into the request), and
``error.type`` (``client_left`` or ``deadline``). ``FastAPIInstrumentor`` does the same for a
FastAPI app that added ``DisconnectMiddleware`` with ``add_middleware()``; instrumentation
inside the middleware (an app instrumented, then wrapped in ``DisconnectMiddleware(app)``)
ends its span as the app is cancelled, before the middleware can say why.

The spans are printed to the console here; point an OTLP exporter at your collector instead.
"""

from __future__ import annotations

import anyio
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_disconnect import DisconnectMiddleware

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))


async def report(request: Request) -> JSONResponse:
    await anyio.sleep(float(request.query_params.get("seconds", "10")))
    return JSONResponse({"report": "ready"})


app = OpenTelemetryMiddleware(
    DisconnectMiddleware(Starlette(routes=[Route("/report", report)]), timeout=30),
    tracer_provider=provider,
)
