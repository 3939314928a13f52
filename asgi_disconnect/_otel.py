"""OpenTelemetry: the request's span records that the middleware stopped the request.

OpenTelemetry's ASGI middleware (``opentelemetry-instrumentation-asgi``) opens a span for
each request and keeps it current while the app it wraps runs. Around this middleware, that
span is current when the middleware reports a stop, and gets:

- an event, ``asgi_disconnect.stopped``, with ``asgi_disconnect.cause`` (``client_left``,
  ``deadline``), ``asgi_disconnect.phase`` (``queued``, ``body``, ``working``,
  ``streaming``) and ``asgi_disconnect.elapsed`` (seconds into the request);
- for a client that left, ``error.type`` set to ``client_left``, as OpenTelemetry's
  semantic conventions ask for a request that fails before its response is complete. The
  span's status is left alone: the server did nothing wrong (a deadline's 504 makes it an
  error by itself, through the status code that OpenTelemetry's middleware records).

Only when OpenTelemetry is imported, through its public API, and only for a request that
was stopped: the others pay nothing.
"""

from __future__ import annotations

import sys

from ._exchange import Cause, Disconnect

#: The event's name, and the prefix of its attributes.
EVENT = "asgi_disconnect.stopped"


def record(disconnect: Disconnect) -> None:
    """Record ``disconnect`` on the current span, if OpenTelemetry is in use."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.add_event(
        EVENT,
        {
            "asgi_disconnect.cause": disconnect.cause.value,
            "asgi_disconnect.phase": disconnect.phase.value,
            "asgi_disconnect.elapsed": disconnect.elapsed,
        },
    )
    if disconnect.cause is Cause.CLIENT_LEFT:
        span.set_attribute("error.type", Cause.CLIENT_LEFT.value)
