"""What the middleware does on trio.

The app runs in a trio cancel scope: shielded scopes hold, and the cancellation is delivered
at every checkpoint until the scope is left, as trio code expects. The watcher is a system
task, in the request's own context, that the request joins before it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import trio

from ._exchange import TICK, Exchange, Ticker
from ._types import AppScope, WrappedApp


def current_token() -> object:
    """Tell this trio run from another; raises RuntimeError outside one."""
    return trio.lowlevel.current_trio_token()


class TrioExchange(Exchange):
    _watch_scope: trio.CancelScope | None = None
    _tell_scope: trio.CancelScope | None = None
    _timer_scope: trio.CancelScope | None = None
    _cancel_scope: trio.CancelScope

    async def run(self, app: WrappedApp, scope: AppScope) -> None:
        # trio keeps deadlines in a heap it checks between its batches: no timer to start, and
        # none to stop, for a request that ends before its deadline. The scope's is when the
        # app is cancelled: after the grace period, if there is one (see _arm_deadline).
        deadline = math.inf
        if self.deadline is not None:
            # Read in this order, never earlier than the deadline on time.monotonic()'s clock.
            left = self.deadline - time.monotonic()
            deadline = trio.current_time() + left + self._grace_period
        with trio.CancelScope(deadline=deadline) as self._cancel_scope:
            self._ticker.add(self)
            try:
                await app(scope, self.receive, self.send)
            finally:
                if self._cancel_scope.cancel_called:
                    # Cancelled by the middleware, maybe before the timer that stops the
                    # request had its turn: stopped all the same.
                    self._stop()
                self._end()  # which notes a deadline that trio's own cancellation met
                if self._tell_scope is not None:
                    self._tell_scope.cancel()
                if self._timer_scope is not None:
                    self._timer_scope.cancel()
                if self._watch_scope is not None:
                    self._watch_scope.cancel()
                    with trio.CancelScope(shield=True):
                        await self._watch_done.wait()

    def _spawn_watcher(self) -> None:
        self._watch_scope = trio.CancelScope()
        self._watch_done = trio.Event()
        trio.lowlevel.spawn_system_task(
            self._watch_in,
            self._watch_scope,
            name="asgi_disconnect watcher",
            context=self._context,
        )

    async def _watch_in(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await self.watch()
        finally:
            self._watch_done.set()

    def _has_watcher(self) -> bool:
        return self._watch_scope is not None

    def _cancel_app(self, delay: float) -> None:
        if delay:
            now = trio.current_time()
            when = now + delay
            if self.deadline is not None:
                # The scope's deadline is the request's and its grace period: a deadline still
                # to come cuts this grace period short; one that has passed is what it follows.
                left = self.deadline - time.monotonic()
                if left > 0:
                    when = min(when, now + left)
            self._cancel_scope.deadline = min(self._cancel_scope.deadline, when)
        else:
            self._cancel_scope.cancel()

    def _spare_app(self) -> None:
        self._cancel_scope.deadline = math.inf  # a grace period's, or a deadline's and its grace

    def _call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self._timer_scope = trio.CancelScope(deadline=trio.current_time() + delay)
        trio.lowlevel.spawn_system_task(
            self._call_when_due,
            self._timer_scope,
            callback,
            name="asgi_disconnect timer",
            # A copy: it is spawned from the deadline's task, which runs in the request's own.
            context=self._context.copy(),
        )

    async def _call_when_due(self, scope: trio.CancelScope, callback: Callable[[], None]) -> None:
        with scope:
            await trio.sleep_forever()
        callback()  # which does nothing once the request is over

    def _arm_deadline(self) -> None:
        # The app is told when its deadline passes, and cancelled when the grace period is
        # over, by its scope's deadline. Without a grace period trio cancels it then, and the
        # request is stopped at the same moment: what its threads run must be stopped too
        # (to_thread.run_sync waits for its thread in a shield). Armed once: the ticker
        # calls outlived_tick() once per request.
        self._tell_scope = trio.CancelScope(
            deadline=self._cancel_scope.deadline - self._grace_period
        )
        trio.lowlevel.spawn_system_task(
            self._tell_when_due,
            self._tell_scope,
            name="asgi_disconnect deadline",
            context=self._context,
        )

    async def _tell_when_due(self, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep_forever()
        self._deadline_passed()  # unless the request is over: then nothing happens

    def _lift_deadline(self) -> None:
        # At once, whatever it costs trio (as much as setting it): lifted later, by the
        # ticker, the deadline could pass first while blocking code held up the loop.
        self._cancel_scope.deadline = math.inf
        if self._tell_scope is not None:
            self._tell_scope.cancel()

    async def _take_cancellation(self) -> None:
        # Only the middleware's own: in a scope of the app's that is cancelled (Starlette's
        # is_disconnected() asks from one), a message ready now is handed over, as servers do.
        if self._cancel_scope.cancel_called:
            await trio.lowlevel.checkpoint_if_cancelled()


class TrioTicker(Ticker):
    exchange_class = TrioExchange

    def _arm(self) -> None:
        trio.lowlevel.spawn_system_task(self._run, name="asgi_disconnect ticker")

    async def _run(self) -> None:
        while self._armed:
            await trio.sleep(TICK)
            self._tick()
