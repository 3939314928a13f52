"""A test-only way to run a suite on the portable path (``_portable.py``) on asyncio.

The middleware takes that path only when the installed anyio lacks the private parts its fast
path uses. ``ASGI_DISCONNECT_PORTABLE=1`` takes it regardless, so that the path an anyio
release could force on users is tested before one does.
"""

from __future__ import annotations

import os

import anyio

from asgi_disconnect import Scope, _middleware, time_left
from asgi_disconnect._portable import PortableTicker

ENVIRONMENT = "ASGI_DISCONNECT_PORTABLE"

#: Whether this run takes the portable path: its app is cancelled as on trio, by anyio's
#: scope at every await, and its deadline is not anyio's (see ``seen_deadline()``).
ACTIVE = False


def from_environment() -> bool:
    """Take the portable path if the environment asks for it; tell whether it did."""
    global ACTIVE
    if os.environ.get(ENVIRONMENT) == "1":
        _middleware._AsyncioTicker = PortableTicker
        ACTIVE = True
    return ACTIVE


def seen_deadline(scope: Scope) -> float:
    """The deadline the app can see, on the loop's clock: anyio's (on trio, with the grace
    period, when the app is cancelled); on the portable path, which keeps the deadline out
    of anyio's scope, as ``time_left(scope)`` tells it."""
    if ACTIVE:
        return anyio.current_time() + time_left(scope)
    return anyio.current_effective_deadline()
