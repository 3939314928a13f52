"""Cancel, on the database server, the statement that a stopped request's thread runs.

A thread cannot be cancelled, but its database driver can cancel the statement it waits for,
from another thread: libpq's cancel request (psycopg 3's ``cancel_safe()``, psycopg2's
``cancel()``), SQLite's ``interrupt()``. The statement then fails in its thread with the
driver's error (``QueryCanceled``, sqlite3's "interrupted"), the transaction rolls back as
after any failed statement, and the connection is usable again. The integrations
(``_django_db.py``, ``_sqlalchemy.py``) run each statement of a request through
:meth:`Guard.run`.

A cancel must never land on a statement other than the stopped request's: the next one on
the same connection, which a pool may have handed to another request. Both ways of
cancelling act on whatever the connection runs when they arrive, and do nothing on an idle
one (PostgreSQL ignores a cancel request for a backend waiting for a command, and
``sqlite3_interrupt()`` on a connection that runs no statement is a no-op). So a statement
is cancelled only while it is the one running, under its connection's lock:

- the thread marks the statement as running, then runs it without the lock;
- the stop takes the lock, checks that this statement is still the one running, and sends the
  cancel while holding it. libpq's cancel returns once the server has passed the request on
  to the backend (a signal, pending from then on): a late one is discarded by a backend that
  goes idle, before it reads its next command;
- the thread takes the lock again before the statement's call returns: the next statement
  cannot begin while a cancel is in flight.

What remains is the other way round: a stop that comes between the mark and the statement
reaching the server cancels nothing, and the statement runs to its end.

SQLite keeps an interrupt in force while any statement of the connection is still active (a
cursor the app is still reading, as ``QuerySet.iterator()`` leaves open): the statements that
begin meanwhile fail as interrupted too. They are the same request's, stopped: their errors
are marked as the cancellation as well.

Only the driver's error for a cancel is marked (SQLSTATE 57014, sqlite3's "interrupted"): a
statement that fails on its own while the cancel is in flight is the app's failure.

Statements that begin once the request has been stopped are not cancelled: they are the
app's clean-up (a rollback to a savepoint) or work it chose to do all the same.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ._stop import Stop, current

logger = logging.getLogger("asgi_disconnect")

T = TypeVar("T")

#: The attribute set on an error raised by a statement that the middleware cancelled.
CANCELLED_MARK = "_asgi_disconnect_cancelled"


def cancelled_by_us(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error raised from it, is a statement the middleware cancelled.

    Raised from it (``raise ... from``), as the app's own error for a failed statement is; not
    one raised while handling it, which may be a failure of its own.
    """
    seen = 0
    while exc is not None and seen < 10:  # chains are short; a cycle must not hang
        if getattr(exc, CANCELLED_MARK, False):
            return True
        exc = exc.__cause__
        seen += 1
    return False


#: SQLSTATE query_canceled; sqlite3's SQLITE_INTERRUPT.
_QUERY_CANCELED = "57014"
_SQLITE_INTERRUPT = 9


def _is_a_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised from, the driver's error for a cancelled statement
    (Django raises its own from the driver's)."""
    seen: BaseException | None = exc
    depth = 0
    while seen is not None and depth < 10:  # chains are short; a cycle must not hang
        depth += 1
        if _QUERY_CANCELED in (getattr(seen, "sqlstate", None), getattr(seen, "pgcode", None)):
            return True  # psycopg 3, psycopg2
        if isinstance(seen, sqlite3.OperationalError) and (
            getattr(seen, "sqlite_errorcode", None) == _SQLITE_INTERRUPT  # Python 3.11+
            or str(seen) == "interrupted"
        ):
            return True
        seen = seen.__cause__
    return False


def canceller(connection: Any) -> tuple[Callable[[], object], bool] | None:
    """How to cancel what a driver's connection runs, and whether that blocks; None: no way.

    MySQL and MariaDB have no cancel on the connection itself: only ``KILL QUERY`` over
    another connection, which names the connection's id, and kills whatever it runs when the
    command arrives, so it cannot be fenced off from the next statement as above.
    """
    if isinstance(connection, sqlite3.Connection):
        return connection.interrupt, False
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(connection, psycopg.Connection):
        # cancel_safe() (psycopg >= 3.2) does not block the interpreter while it waits.
        cancel = getattr(connection, "cancel_safe", None) or connection.cancel
        return cancel, True
    extensions = sys.modules.get("psycopg2.extensions")
    if extensions is not None and isinstance(connection, extensions.connection):
        return connection.cancel, True
    return None


class Guard:
    """One connection's running statement, which the request that runs it may cancel."""

    __slots__ = ("_interrupted", "_lock", "_running")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: _Statement | None = None
        #: The request whose statement SQLite was last told to interrupt (see above).
        self._interrupted: Stop | None = None

    def run(self, connection: Any, call: Callable[[], T]) -> T:
        """Run ``call``, a statement on the driver's ``connection``, cancellable by its request."""
        stopper = current.get()
        if stopper is None or not stopper.cancels_statements:
            return call()  # not a request's, or the app said not to
        how = canceller(connection)
        if how is None:
            return call()
        statement = _Statement(self, stopper, *how)
        with self._lock:
            self._running = statement
        handle = stopper.register(statement.stop)
        if handle is None:
            # Stopped already (clean-up), or the response is complete (work after it).
            with self._lock:
                self._running = None
            try:
                return call()
            except BaseException as exc:
                if self._interrupted is stopper and _is_a_cancel(exc):
                    setattr(exc, CANCELLED_MARK, True)  # SQLite's interrupt, still in force
                raise
        try:
            return call()
        except BaseException as exc:
            if (statement.cancelled or self._interrupted is stopper) and _is_a_cancel(exc):
                setattr(exc, CANCELLED_MARK, True)
            raise
        finally:
            handle.unregister()
            with self._lock:  # after a cancel in flight: see the module's docstring
                self._running = None


class _Statement:
    __slots__ = ("_blocks", "_cancel", "_guard", "_stopper", "cancelled")

    def __init__(
        self, guard: Guard, stopper: Stop, cancel: Callable[[], object], blocks: bool
    ) -> None:
        self._guard = guard
        self._stopper = stopper
        self._cancel = cancel
        self._blocks = blocks
        self.cancelled = False

    def stop(self) -> None:
        # In the event loop's thread. libpq's cancel opens a connection to the server and
        # waits for it: in a thread of its own, so that the loop never waits for a database.
        if self._blocks:
            threading.Thread(target=self._send, name="asgi_disconnect cancel", daemon=True).start()
        else:
            self._send()

    def _send(self) -> None:
        guard = self._guard
        with guard._lock:
            if guard._running is not self:
                return  # it ended meanwhile: whatever runs now is not ours to cancel
            self.cancelled = True
            if not self._blocks:  # SQLite's interrupt may outlast the statement
                guard._interrupted = self._stopper
            try:
                self._cancel()
            except Exception:
                logger.warning("could not cancel a stopped request's statement", exc_info=True)
