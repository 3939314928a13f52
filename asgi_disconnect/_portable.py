"""What the middleware does on asyncio with an anyio it was not built for: public API only.

The fast path (``_asyncio.py``) extends anyio's asyncio cancel scope, and reads and sets
private parts of it and of asyncio's tasks. Another anyio release may rename or drop them;
used regardless, they would fail or misbehave in the middle of a request. So they are checked
when the middleware is imported (:func:`asyncio_ticker_class`), and if any has changed, each
request runs here instead, with a warning naming what changed.

Here the app runs in a plain ``anyio.CancelScope``, as on trio: shielded scopes hold, the
thread limiter keeps its bound, the app's task groups are cancelled, and a cancellation from
outside propagates. What is given up:

- the single delivery: anyio cancels at every ``await`` until the scope is left, so clean-up
  code that awaits after its ``CancelledError`` (asyncio's way: close a connection, roll
  back) is cancelled again there, as under ``anyio.CancelScope`` anywhere; and a
  ``CancelledError`` the app raises anew, not chained to the one it was given, goes on to
  the server, as anyio lets it;
- the deadline's visibility: the middleware keeps a request's deadline with a timer of its
  own, and ``anyio.current_effective_deadline()`` does not show it (``time_left(scope)``
  does).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
import warnings
from asyncio import AbstractEventLoop, Task, TimerHandle
from collections.abc import Callable

import anyio

from ._exchange import TICK, Exchange, Ticker
from ._types import AppScope, WrappedApp


def asyncio_ticker_class() -> type[Ticker]:
    """The fast path's ticker if the installed anyio and asyncio have what it uses; else,
    with a ``RuntimeWarning`` that names what changed, this module's."""
    try:
        from ._asyncio import AsyncioTicker, missing_internals
    except ImportError as exc:  # a private module or name gone altogether
        missing = [str(exc)]
    else:
        missing = missing_internals()
        if not missing:
            return AsyncioTicker
    from importlib.metadata import version

    warnings.warn(
        "asgi_disconnect relies on private parts of anyio's and asyncio's tasks for its fast "
        f"path on asyncio, which this anyio ({version('anyio')}) or Python has changed "
        f"(missing: {', '.join(missing)}): it falls back to anyio's public cancel scope, "
        "which is slower and cancels the app at every await until it returns; upgrade "
        "asgi_disconnect, or pin anyio to a release it was tested with",
        RuntimeWarning,
        stacklevel=2,
    )
    return PortableTicker


class PortableExchange(Exchange):
    _watcher: Task[None] | None = None
    _timer: TimerHandle | None = None
    _deadline_timer: TimerHandle | None = None
    _cancel_scope: anyio.CancelScope

    async def run(self, app: WrappedApp, scope: AppScope) -> None:
        if self.deadline is not None:
            # Kept by a timer of the middleware's, not given to anyio's scope: anyio would
            # cancel the app at the deadline by itself, on the loop's clock (which uvloop's
            # lags, and rounds to the millisecond), before the middleware could tell an app
            # that listens, answer 504, or give the grace period.
            self._deadline_timer = self._loop.call_later(
                self.time_left(), self._deadline_due, context=self._context
            )
        with anyio.CancelScope() as self._cancel_scope:
            self._ticker.add(self)
            try:
                await app(scope, self.receive, self.send)
            finally:
                if self._cancel_scope.cancel_called:
                    # Cancelled by the middleware, maybe before the timer that stops the
                    # request had its turn: stopped all the same.
                    self._stop()
                self._end()
                for timer in (self._timer, self._deadline_timer):
                    if timer is not None:
                        timer.cancel()
                self._timer = self._deadline_timer = None
                watcher = self._watcher
                if watcher is not None:
                    watcher.cancel()
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait((watcher,))
                    # Its CancelledError's traceback holds this exchange: no cycle.
                    self._watcher = None

    @property
    def _loop(self) -> AbstractEventLoop:
        return self._ticker.loop  # type: ignore[return-value]

    def _spawn_watcher(self) -> None:
        self._watcher = self._context.run(self._loop.create_task, self.watch())

    def _has_watcher(self) -> bool:
        return self._watcher is not None

    def _call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self._timer = self._loop.call_later(delay, callback, context=self._context)

    def _cancel_app(self, delay: float) -> None:
        if delay:
            now = self._loop.time()
            when = now + delay
            if self.deadline is not None:
                # A deadline still to come cuts the grace period short; one that has passed
                # is what the grace period follows.
                left = self.deadline - time.monotonic()
                if left > 0:
                    when = min(when, now + left)
            self._cancel_scope.deadline = min(self._cancel_scope.deadline, when)
        else:
            self._cancel_scope.cancel()

    def _deadline_due(self) -> None:
        left = self.time_left()
        if 0 < left < math.inf:
            # Early on time.monotonic()'s clock, as uvloop's timers may be: not yet.
            self._deadline_timer = self._loop.call_later(
                left, self._deadline_due, context=self._context
            )
            return
        self._deadline_timer = None
        self._deadline_passed()  # unless the request is over: then nothing happens

    def _lift_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _spare_app(self) -> None:
        self._cancel_scope.deadline = math.inf  # a grace period's

    async def _take_cancellation(self) -> None:
        # anyio delivers at the loop's next iteration: make that be here, and not after the
        # app has returned, in the middleware's clean-up.
        if self._cancel_scope.cancel_called:
            await anyio.lowlevel.checkpoint_if_cancelled()


class PortableTicker(Ticker):
    """The ticker of an asyncio loop, on either path: one ``call_later()`` per tick."""

    loop: AbstractEventLoop
    exchange_class: type[Exchange] = PortableExchange

    def __init__(self, loop: AbstractEventLoop) -> None:
        super().__init__(loop)
        # The timer runs in a context of its own. Armed by a request, it would otherwise run
        # in a copy of that request's context, and keep it alive for as long as load lasts.
        self._context = contextvars.Context()

    def _arm(self) -> None:
        self.loop.call_later(TICK, self._on_timer, context=self._context)

    def _on_timer(self) -> None:
        self._tick()
        if self._armed:
            self._arm()
