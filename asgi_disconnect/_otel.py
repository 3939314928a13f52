"""OpenTelemetry: the request's span records that the middleware stopped the request.

OpenTelemetry's ASGI middleware (``opentelemetry-instrumentation-asgi``, which
``FastAPIInstrumentor`` adds to the app too) opens a span for each request and keeps it
current while what it wraps runs. Around this middleware, that span is current when the
middleware stops a request (whatever span is current then is the one recorded on), and gets:

- an event, ``asgi_disconnect.stopped``, with ``asgi_disconnect.cause`` (``client_left``,
  ``deadline``), ``asgi_disconnect.phase`` (``queued``, ``body``, ``working``,
  ``streaming``) and ``asgi_disconnect.elapsed`` (seconds into the request);
- ``error.type``, ``client_left`` or ``deadline``, as OpenTelemetry's semantic conventions
  ask for a request that ends before its response is complete. A deadline is the server's
  failure: the span's status is set to error, as it is for the 504, also where a response
  already begun is cut instead. A client that left is not: the status is left as it is.

It is recorded before the middleware's own answer (a 499, a 504, the end of a cut stream),
on whose last message OpenTelemetry's middleware ends its span. Only when OpenTelemetry is
imported, through its public API, and only for a request that was stopped: the others pay
nothing. A span that fails to record is logged, and the request goes on.
"""

from __future__ import annotations

import logging
import sys

from ._exchange import Cause, Disconnect

logger = logging.getLogger("asgi_disconnect")

#: The event's name, and the prefix of its attributes.
EVENT = "asgi_disconnect.stopped"


def record(disconnect: Disconnect) -> None:
    """Record ``disconnect`` on the current span, if OpenTelemetry is in use."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return
    try:
        span = trace.get_current_span()
        if not span.is_recording():
            return
        cause = disconnect.cause.value
        span.add_event(
            EVENT,
            {
                "asgi_disconnect.cause": cause,
                "asgi_disconnect.phase": disconnect.phase.value,
                "asgi_disconnect.elapsed": disconnect.elapsed,
            },
        )
        span.set_attribute("error.type", cause)
        if disconnect.cause is Cause.DEADLINE:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "deadline passed"))
    except Exception:
        # Telemetry that fails must not take the place of the answer, or of what the app
        # raised.
        logger.exception("recording the stop on the current OpenTelemetry span failed")
