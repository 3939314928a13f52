"""What runs when a request is stopped: callbacks, registered from any thread.

Work in a thread cannot be cancelled, but what it waits for often can: a database statement
(``_statements.py``), a subprocess, a connection the app manages itself. A request's
:class:`Stop` holds the callbacks that do that, as Go's ``context.AfterFunc`` does for a
context. The middleware makes one per request, and puts it in the request's context, which
asgiref and anyio copy into the threads the request's work runs in.

A request is stopped once its client has left, or its deadline has passed, before its
response was complete, and after the grace period if one is set. Each callback runs at most
once, in the event loop's thread, and never once the response is complete or the request is
over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextvars import ContextVar

logger = logging.getLogger("asgi_disconnect")

_RUNNING, _STOPPED, _DONE = 0, 1, 2

# One lock for every request: registering and unregistering are a few dictionary operations,
# and most requests register nothing, so none pays for a lock of its own.
_lock = threading.Lock()


class Stop:
    """The callbacks to run when one request is stopped."""

    __slots__ = ("_callbacks", "_state", "cancels_statements", "standing_in")

    def __init__(self, cancels_statements: bool = True) -> None:
        #: True while a middleware inside the one serving this request sends the 499 that
        #: stands for no answer (see Exchange.answer_for_the_app).
        self.standing_in = False
        self._callbacks: dict[StopHandle, Callable[[], object]] | None = None
        self._state = _RUNNING
        #: Whether the integrations cancel this request's database statements.
        self.cancels_statements = cancels_statements

    @property
    def stopped(self) -> bool:
        return self._state == _STOPPED

    def register(self, callback: Callable[[], object]) -> StopHandle | None:
        """Have ``callback`` run when the request is stopped; None if that can no longer be."""
        with _lock:
            if self._state != _RUNNING:
                return None
            handle = StopHandle(self)
            if self._callbacks is None:
                self._callbacks = {}
            self._callbacks[handle] = callback
            if self._state == _RUNNING:
                return handle
            # finish() takes no lock: it sets the state, then looks for callbacks, where this
            # adds the callback, then looks at the state. One of the two sees the other's
            # write: here, that the request finished after the first look.
            del self._callbacks[handle]
            return None

    def _unregister(self, handle: StopHandle) -> bool:
        with _lock:
            callbacks = self._callbacks
            return callbacks is not None and callbacks.pop(handle, None) is not None

    def stop(self) -> None:
        """Run the callbacks, once; in the event loop's thread."""
        with _lock:
            if self._state != _RUNNING:
                return
            self._state = _STOPPED
            callbacks = self._callbacks
            self._callbacks = None
        # Outside the lock: a callback may register or unregister others.
        for callback in (callbacks or {}).values():
            run_callback(callback)

    def finish(self) -> None:
        """The response is complete, or the request is over: nothing will run from now on.

        In the event loop's thread, as :meth:`stop`. Every request is finished and most
        register nothing: no lock unless a callback was registered (see :meth:`register`).
        """
        if self._state == _RUNNING:
            self._state = _DONE
        if self._callbacks is not None:
            with _lock:
                self._callbacks = None


class StopHandle:
    """A callback registered with ``on_stop``, which ``unregister`` takes back."""

    __slots__ = ("_stop",)

    def __init__(self, stop: Stop | None) -> None:
        self._stop = stop

    def unregister(self) -> bool:
        """Take the callback back.

        :returns: True if this call kept the callback from running; False if it has run or
            is running, will never run (the response is complete, the request is over, or it
            was registered outside a request), or was taken back already.
        """
        stop = self._stop
        if stop is None:
            return False
        self._stop = None
        return stop._unregister(self)


def run_callback(callback: Callable[[], object]) -> None:
    # As asyncio runs its callbacks: whatever a callback raises is logged, and the others
    # run, except SystemExit and KeyboardInterrupt, which stop the process. A BaseException
    # let through would end the watcher silently on asyncio, and all of trio.run on trio.
    try:
        callback()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        logger.exception("the on_stop callback %r raised", callback)


#: The request being served, as its tasks and threads see it.
current: ContextVar[Stop | None] = ContextVar("asgi_disconnect_stop", default=None)
