"""A test-only way to give every request its watcher as it starts.

In production a request gets its watcher once it outlives a tick (a millisecond), and most
requests in the tests end sooner. ``ASGI_DISCONNECT_WATCH_AT_ONCE=1`` runs a suite with every
request on the other path: its watcher started as the request begins, as for any request
that lives past a millisecond under a server.
"""

from __future__ import annotations

import asyncio
import contextvars
import os

from asgi_disconnect._exchange import Exchange, Ticker

ENVIRONMENT = "ASGI_DISCONNECT_WATCH_AT_ONCE"


_add = Ticker.add


def _start_at_once(self: Ticker, exchange: Exchange) -> None:
    # The ticker's own call, one step early: at the loop's next step, as soon as the request
    # first waits, rather than a tick or two later.
    _add(self, exchange)
    if isinstance(self.loop, asyncio.AbstractEventLoop):
        self.loop.call_soon(exchange.outlived_tick, context=contextvars.Context())
    else:
        import trio

        trio.lowlevel.current_trio_token().run_sync_soon(exchange.outlived_tick)


def start_watchers_at_once() -> None:
    Ticker.add = _start_at_once  # type: ignore[method-assign]


def from_environment() -> bool:
    """Start watchers at once if the environment asks for it; tell whether it did."""
    if os.environ.get(ENVIRONMENT) == "1":
        start_watchers_at_once()
        return True
    return False
