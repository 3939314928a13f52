"""What the middleware does on asyncio (and uvloop).

The app runs in an anyio cancel scope, so that its cancellation follows anyio's rules:
shielded scopes hold (``anyio.to_thread.run_sync`` keeps its thread-limiter token until the
thread is done, httpcore finishes its pool bookkeeping), tasks in the app's task groups are
cancelled, and a cancellation from outside the middleware propagates.

anyio re-delivers a cancellation at every later ``await`` (level-triggered). asyncio code does
not expect that: ``asyncio.timeout()``, Django and SQLAlchemy deliver ``CancelledError`` once
and let clean-up code await (close a connection, roll back, return it to its pool). So the
scope the middleware cancels, :class:`CancelOnce`, delivers its own cancellation to the task
that runs the app once, at the first ``await`` outside any shield, and is an ordinary scope
again from then on, as ``asyncio.timeout()`` is once it has fired.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from asyncio import AbstractEventLoop, CancelledError, Task, current_task
from collections.abc import Callable
from types import TracebackType
from typing import Any

# The private pieces of anyio used here: its asyncio cancel scope, whose delivery round
# CancelOnce extends (see its docstring), the table of each task's innermost scope, to see
# where the task stands and to enter a scope late (AsyncioExchange._enter_late), and how
# anyio tells its own CancelledError. anyio's public CancelScope() builds this class.
from anyio._backends._asyncio import CancelScope, TaskState, _task_states, is_anyio_cancellation

from ._exchange import TICK, Exchange
from ._portable import PortableTicker
from ._types import AppScope, WrappedApp

#: Every private attribute this module reads or sets, of anyio's and asyncio's classes. They
#: are checked when the middleware is imported: if one is missing, the portable path is used
#: instead (see _portable.py).
INTERNALS: dict[type, tuple[str, ...]] = {
    CancelScope: (
        "_active",
        "_cancel_called",
        "_cancel_handle",
        "_cancel_reason",
        "_cancelled_caught",
        "_cancelling_at_enter",
        "_child_scopes",
        "_deadline",
        "_deliver_cancellation",
        "_host_task",
        "_parent_cancellation_is_visible_to_us",
        "_parent_scope",
        "_pending_uncancellations",
        "_restart_cancellation_in_parent",
        "_shield",
        "_tasks",
        "_timeout",
        "_timeout_handle",
    ),
    TaskState: ("cancel_scope",),
    Task: ("_fut_waiter", "_must_cancel"),
}


def missing_internals(internals: dict[type, tuple[str, ...]] | None = None) -> list[str]:
    """The private attributes used here (or in ``internals``) that the installed anyio or
    asyncio lacks."""
    if internals is None:
        internals = INTERNALS
    return [
        f"{cls.__module__}.{cls.__qualname__}.{name}"
        for cls, names in internals.items()
        for name in names
        if not _has(cls, name)
    ]


def _has(cls: type, name: str) -> bool:
    if hasattr(cls, name):  # a slot, a method, or an attribute of a class in C
        return True
    # A class in Python (asyncio's Task without its C accelerator, as on PyPy) sets its
    # instances' attributes in __init__.
    init = getattr(vars(cls).get("__init__"), "__code__", None)
    return init is not None and name in init.co_names


def _cancellation_pending(task: Task[Any]) -> bool:
    """Whether a ``CancelledError`` is on its way to ``task``: asked for and not yet thrown
    in. A task that awaits another task, or gather(), passes the request down to what it
    awaits."""
    waiter: Any = task
    while isinstance(waiter, Task):
        if waiter._must_cancel:  # type: ignore[attr-defined]
            return True
        waiter = waiter._fut_waiter  # type: ignore[attr-defined]
    if waiter is None:
        return False
    return bool(waiter.cancelled() or getattr(waiter, "_cancel_requested", False))


if sys.version_info >= (3, 11):

    def _cancel_requests(task: Task[Any]) -> int:
        return task.cancelling()

else:  # pragma: no cover (coverage is measured on 3.11+)

    def _cancel_requests(task: Task[Any]) -> int:
        # Python 3.10 counts no requests: a cancellation is pending or it is not.
        return int(_cancellation_pending(task))


#: What the middleware's ``CancelledError`` says. Not anyio's "Cancelled via cancel scope ...":
#: an anyio scope in the app, cancelled at the same moment, must not take it for its own.
REASON = "asgi_disconnect: the client went away"


class CancelOnce(CancelScope):
    """An anyio cancel scope whose own cancellation reaches its host task once.

    anyio cancels by rounds: each round cancels every task in the scope that waits outside a
    shield, and another round follows at the next loop iteration while any task remains. A
    shielded host is skipped, so the cancellation reaches it at its first ``await`` after the
    shield. Once a round has reached the host, the scope is no longer cancelled, as
    ``asyncio.timeout()`` is not once it has fired: the host has its ``CancelledError``, its
    clean-up may await and use anyio (threads, locks, sockets), and the scopes around this one
    reach it again. On leaving, the scope absorbs that ``CancelledError``, and no other: a
    cancellation from outside goes on.
    """

    _delivered = False
    #: For a scope entered late (AsyncioExchange._enter_late), when its request began, in the
    #: order requests begin; inf for one entered with the app.
    _order = math.inf
    #: A request's deadline has no timer until the request outlives a tick: most end first.
    _timer_allowed = False
    #: Called when the deadline passes, instead of cancelling.
    on_deadline: Callable[[], None] | None = None

    def allow_timer(self) -> None:
        self._timer_allowed = True
        if self._active and self._timeout_handle is None and not self._cancel_called:
            self._timeout()

    def _timeout(self) -> None:
        if self._deadline == math.inf or not self._timer_allowed:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timeout_handle = loop.call_at(self._deadline, self._timeout)
            return
        self._timeout_handle = None
        if self.on_deadline is None:
            self.cancel()  # a grace period is over
        else:
            self.on_deadline()

    def cancel(self, reason: str | None = None) -> None:
        if not self._delivered:  # once is all
            super().cancel(reason)

    def _deliver_cancellation(self, origin: CancelScope) -> bool:
        host = self._host_task
        if origin is not self or host is None:
            return super()._deliver_cancellation(origin)
        if self._delivered:  # pragma: no cover (anyio asks only a scope still cancelled)
            return False
        if self._delivered_by_the_apps_scope(host):
            self._done_delivering()
            return False
        self._cancel_reason = REASON
        if self._folds_into_a_pending_cancellation(host):
            # asyncio folds a second request into a CancelledError on its way, as it does two
            # cancel() calls: the host gets one, which counts for both (anyio skips a task
            # whose cancellation is pending, and would deliver again at the clean-up's await).
            if self._pending_uncancellations is not None:  # pragma: no branch (3.10: None)
                # Counted, and taken back on leaving, as anyio's own (Python 3.10 counts
                # none, and would take the error on its way for this scope's by its message).
                host.cancel(REASON)
                self._pending_uncancellations += 1
            self._done_delivering()
            return False
        before = _cancel_requests(host)
        retry = super()._deliver_cancellation(origin)
        if _cancel_requests(host) == before:
            return retry
        self._done_delivering()
        return False

    def _delivered_by_the_apps_scope(self, host: Task[Any]) -> bool:
        """Whether a scope of the app's, cancelled too, delivered this scope's cancellation.

        anyio skips a scope that is cancelled itself: that scope delivers its own
        ``CancelledError`` to the task inside it, and does not absorb it on leaving, since
        this scope is cancelled around it. That error is this scope's delivery. Once it has
        left the app's scope, anyio hands the request it made (to be taken back when the
        error is absorbed) to the scope around it: a request handed on, and the task no
        longer inside a cancelled or shielded scope, tell that it is on its way out.
        Python 3.10 counts no requests (see docs/how-it-cancels.md).
        """
        state = _task_states.get(host)
        scope = None if state is None else state.cancel_scope
        handed_on = 0
        while scope is not self:
            if scope is None or scope._cancel_called or scope._shield:
                return False  # inside a scope that delivers its own, or holds
            handed_on += scope._pending_uncancellations or 0
            scope = scope._parent_scope
        return handed_on + (self._pending_uncancellations or 0) > 0

    def _folds_into_a_pending_cancellation(self, host: Task[Any]) -> bool:
        """Whether a cancellation that is not this scope's, nor an anyio scope's of the app's,
        is on its way to the host: a ``Task.cancel()`` from the server, or an
        ``asyncio.timeout()`` of the app's, in this loop iteration. A scope of the app's that
        is cancelled delivers its own (see ``_delivered_by_the_apps_scope``)."""
        if not _cancellation_pending(host):
            return False
        state = _task_states.get(host)
        scope = None if state is None else state.cancel_scope
        while scope is not self:
            if scope is None or scope._cancel_called:
                return False
            scope = scope._parent_scope
        return True

    def _done_delivering(self) -> None:
        self._delivered = True
        self._cancel_called = False
        self._deadline = math.inf  # a grace period's, now over
        # The round that reached the host scheduled another.
        if self._cancel_handle is not None:  # pragma: no branch
            self._cancel_handle.cancel()
            self._cancel_handle = None
        # A scope around this one, cancelled meanwhile, skipped this one while it was
        # cancelled: it delivers again from here.
        self._restart_cancellation_in_parent()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> bool:
        if not self._delivered:
            return super().__exit__(exc_type, exc_val, exc_tb)
        host = self._host_task
        at_enter = self._cancelling_at_enter
        outside = self._parent_cancellation_is_visible_to_us
        # Cancelled again for anyio's bookkeeping: it takes back the request it delivered.
        self._cancel_called = True
        try:
            if super().__exit__(exc_type, exc_val, exc_tb):
                return True  # the CancelledError of a scope of the app's, delivered for this one
            if not isinstance(exc_val, CancelledError):
                return False
            if outside:
                # An anyio scope around this one was cancelled meanwhile: the CancelledError is
                # its now, and must say so in the form anyio takes for its own, or that scope
                # lets it through (a fail_after() would not raise TimeoutError).
                if is_anyio_cancellation(exc_val):
                    return False
                raise CancelledError(f"Cancelled via cancel scope {id(self):x}; reason: {REASON}")
            if sys.version_info >= (3, 11):
                # Nothing but this scope asked for a cancellation: the app's CancelledError,
                # even one it raised anew, is the answer to this scope's.
                ours = host is not None and host.cancelling() <= at_enter
            else:  # pragma: no cover (coverage is measured on 3.11+)
                # Python 3.10 counts no requests: the CancelledError delivered is ours, even
                # when asyncio raised another in its place (a task or gather() the app awaited).
                ours = _delivered_here(exc_val)
            if ours:
                self._cancelled_caught = True
            return ours
        finally:
            del exc_val


def _delivered_here(exc: BaseException | None) -> bool:  # pragma: no cover (Python 3.10)
    while isinstance(exc, CancelledError):
        if exc.args == (REASON,):
            return True
        exc = exc.__context__
    return False


#: Numbers requests in the order they begin: of two in one task, the one begun first is the
#: outer one (see AsyncioExchange._enter_late).
_requests_begun = itertools.count()


class AsyncioExchange(Exchange):
    _watcher: Task[None] | None = None
    _timer: asyncio.TimerHandle | None = None
    #: None until the request is cancelled, for a request without a deadline (see run()).
    _cancel_scope: CancelOnce | None = None
    #: The same scope, for a request with a deadline: entered with the app.
    _deadline_scope: CancelOnce

    async def run(self, app: WrappedApp, scope: AppScope) -> None:
        self._ticker.add(self)
        # With the loop the middleware has just found running: asking for it again costs
        # Python 3.11 a getpid() system call (about 0.4 µs).
        loop: AbstractEventLoop = self._ticker.loop  # type: ignore[assignment]
        host = current_task(loop)
        try:
            if self._budget is not None or host is None:
                await self._run_scoped(app, scope)
            else:
                # Entering an anyio scope costs a request more than all the rest of the
                # middleware (anyio keeps a state for each task, in a weak dictionary): most
                # requests are never cancelled, so none is entered. The app runs as if it
                # were, and if it is cancelled, the scope is put where it would be, between
                # the scope the app was called in and the app's own scopes (_enter_late()),
                # and left here as a with block would leave it. In line: a coroutine of its
                # own would hold a frame for as long as the request is open.
                self._host = host
                self._order = next(_requests_begun)
                state = _task_states.get(host)
                self._outer = None if state is None else state.cancel_scope
                self._cancel_requests_at_start = _cancel_requests(host)
                try:
                    await app(scope, self.receive, self.send)
                except BaseException as exc:
                    cancel_scope = self._cancel_scope
                    if cancel_scope is None or not cancel_scope.__exit__(
                        type(exc), exc, exc.__traceback__
                    ):
                        raise
                else:
                    cancel_scope = self._cancel_scope
                    if cancel_scope is not None:
                        cancel_scope.__exit__(None, None, None)
        finally:
            cancel_scope = self._cancel_scope
            if cancel_scope is not None:
                cancel_scope.on_deadline = None  # no cycle through the exchange
                if cancel_scope._delivered or cancel_scope.cancel_called:
                    # Cancelled by the middleware, maybe before the timer that stops the
                    # request had its turn: stopped all the same.
                    self._stop()
            self._end()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            watcher = self._watcher
            if watcher is not None:
                watcher.cancel()
                # asyncio.wait() leaves the watcher's own CancelledError in the watcher, and
                # lets the server's Task.cancel() through. An anyio scope around the
                # middleware waits, as trio's do: cancelled here, after the app returned, it
                # would take the place of the app's response or of what the app raised.
                with CancelScope(shield=True):
                    await asyncio.wait((watcher,))
                # A cancelled task keeps its CancelledError, whose traceback holds the
                # watcher's frame and so this exchange: a cycle only the garbage collector
                # would break, keeping the request's state alive until it runs.
                self._watcher = None

    async def _run_scoped(self, app: WrappedApp, scope: AppScope) -> None:
        # A deadline must be anyio's from the start, for current_effective_deadline() to show
        # it: the scope is entered around the app.
        budget = self._budget
        if budget is None:  # pragma: no cover (a coroutine driven outside any task)
            cancel_scope = self._cancel_scope = CancelOnce()
        else:
            cancel_scope = CancelOnce(deadline=self._on_loop_clock())
            self._cancel_scope = self._deadline_scope = cancel_scope
            if budget < 2 * TICK:
                # Set before the scope is entered, where anyio arms its timer: a deadline
                # within the ticks that a request waits for its watcher gets one at once.
                cancel_scope._timer_allowed = True
            cancel_scope.on_deadline = self._deadline_reached
        with cancel_scope:
            await app(scope, self.receive, self.send)

    def _enter_late(self) -> CancelOnce:
        """The app's cancel scope, entered now as if it had been when the app was called.

        anyio links each scope to the one it was entered in, and a task to its innermost
        scope. The new scope goes where the app was called: below the scope the middleware
        was called in, or below the scope entered late, the same way, by a middleware around
        this one in the same task (a router calling a sub-app wrapped in a middleware of its
        own), which was called first. What the app has entered since (the outermost of its
        scopes still open, or the task itself) is the new scope's in their place.
        """
        cancel_scope = self._cancel_scope = CancelOnce()
        cancel_scope._order = self._order
        host = self._host
        cancel_scope._host_task = host
        cancel_scope._cancelling_at_enter = self._cancel_requests_at_start
        state = _task_states.get(host)
        above = None if state is None else state.cancel_scope
        below: CancelScope | None = None  # the outermost of the app's scopes still open
        while above is not self._outer and not (
            isinstance(above, CancelOnce) and above._order < self._order
        ):
            if above is None:  # pragma: no cover (anyio nests a task's scopes)
                raise RuntimeError("the app's cancel scopes are not nested in the middleware's")
            below, above = above, above._parent_scope
        cancel_scope._parent_scope = above
        if below is None:  # the app is in no scope of its own at the moment
            cancel_scope._tasks.add(host)
            if state is None:
                _task_states[host] = TaskState(None, cancel_scope)
            else:
                state.cancel_scope = cancel_scope
            if above is not None:
                above._tasks.discard(host)
        else:
            below._parent_scope = cancel_scope
            cancel_scope._child_scopes.add(below)
            if above is not None:
                above._child_scopes.discard(below)
        if above is not None:
            above._child_scopes.add(cancel_scope)
        cancel_scope._active = True
        return cancel_scope

    def _spawn_watcher(self) -> None:
        loop: AbstractEventLoop = self._ticker.loop  # type: ignore[assignment]
        self._watcher = self._context.run(loop.create_task, self.watch())

    def _has_watcher(self) -> bool:
        return self._watcher is not None

    def _call_later(self, delay: float, callback: Callable[[], None]) -> None:
        loop: AbstractEventLoop = self._ticker.loop  # type: ignore[assignment]
        self._timer = loop.call_later(delay, callback, context=self._context)

    def _cancel_app(self, delay: float) -> None:
        cancel_scope = self._cancel_scope
        if cancel_scope is None:
            cancel_scope = self._enter_late()
        if delay:
            loop: AbstractEventLoop = self._ticker.loop  # type: ignore[assignment]
            cancel_scope._timer_allowed = True
            now = loop.time()
            # A deadline still to come may cut the grace period short; one that has passed
            # is what the grace period follows.
            deadline = cancel_scope.deadline
            cancel_scope.deadline = now + delay if deadline <= now else min(deadline, now + delay)
        else:
            cancel_scope.cancel()

    def _on_loop_clock(self) -> float:
        # The deadline is kept on time.monotonic()'s clock; the loop's may differ (uvloop's is
        # read once an iteration). Read in this order, never earlier than the deadline.
        left = self.deadline - time.monotonic()  # type: ignore[operator]
        loop: AbstractEventLoop = self._ticker.loop  # type: ignore[assignment]
        return loop.time() + left

    def _deadline_reached(self) -> None:
        if self.disconnected:
            self._deadline_scope.cancel()  # a grace period is over
        elif 0 < self.time_left() < math.inf:
            # The loop's clock ran ahead of the deadline's: not yet.
            self._deadline_scope.deadline = self._on_loop_clock()
        else:
            self._deadline_passed()

    def _arm_deadline(self) -> None:
        self._deadline_scope.allow_timer()

    def _lift_deadline(self) -> None:
        cancel_scope = self._deadline_scope
        if cancel_scope._timer_allowed:
            cancel_scope.deadline = math.inf  # and its timer with it
        else:
            cancel_scope._deadline = math.inf  # no timer yet: what anyio reports is all

    def _spare_app(self) -> None:
        cancel_scope = self._cancel_scope
        if cancel_scope is not None:  # None: it was told, and never to be cancelled
            cancel_scope.deadline = math.inf  # and the grace period's timer with it

    async def _take_cancellation(self) -> None:
        # Cancelled from the app's own task (it read the disconnect, or send() failed),
        # the scope delivers at the next loop iteration: make that be here, and not after
        # the app has returned, in the middleware's clean-up.
        cancel_scope = self._cancel_scope
        if cancel_scope is not None and cancel_scope.cancel_called:
            await asyncio.sleep(0)


class AsyncioTicker(PortableTicker):
    exchange_class = AsyncioExchange
