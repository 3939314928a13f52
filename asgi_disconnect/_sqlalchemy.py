"""SQLAlchemy's sync engines: their statements, cancelled on the server when the request stops.

A Starlette or FastAPI ``def`` endpoint, ``run_in_threadpool`` and ``anyio.to_thread``
run their statements in threads, which nothing can cancel. Once SQLAlchemy is imported, the
middleware listens, for every engine, to the dialect events that execute a statement
(``do_execute``, ``do_execute_no_params``, ``do_executemany``): the listener runs the DBAPI
call through the connection's ``_statements.Guard``, so that the statement a stopped
request's thread runs is cancelled (PostgreSQL with psycopg 3 or psycopg2, SQLite), and
fails in its thread with SQLAlchemy's ``OperationalError``, raised from the driver's error
that carries the mark. The connection goes back to the pool as after any failed statement.

The listener is the first of each event, and calls the others itself, in their order,
inside the guard: one of them may execute the statement in place of the dialect, as the
event allows. Async engines' connections are adapted ones, which ``canceller()`` does not
know: their statements only run, and their coroutine's cancellation cancels them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from ._statements import Guard

#: Where a connection's guard is kept: its pool entry's ``record_info``.
_GUARD_KEY = "asgi_disconnect_guard"

_EVENTS = ("do_execute", "do_execute_no_params", "do_executemany")

_hooked = False
_hook_lock = threading.Lock()


def hook_if_imported() -> None:
    """Listen to every engine's statements, once per process, if SQLAlchemy is imported."""
    global _hooked
    # Without importing SQLAlchemy: a process that uses it has imported it already.
    if _hooked or "sqlalchemy.engine" not in sys.modules:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    with _hook_lock:  # idempotent all the same: a listener is added only once
        for name, listener in _LISTENERS.items():
            if not event.contains(Engine, name, listener):
                # First, so that no other listener executes the statement outside the guard.
                event.listen(Engine, name, listener, insert=True)
        _hooked = True


class _Skip(threading.local):
    #: The event whose listeners the thread is calling from inside ours: ours is skipped.
    event: str | None = None


_skip = _Skip()


def _listener(name: str) -> Callable[..., bool]:
    def listener(cursor: Any, statement: str, *args: Any) -> bool:
        if _skip.event == name:
            _skip.event = None
            return False  # ours, met again in the loop below
        context = args[-1]
        if context is None:
            return False  # a statement run outside an execution (a sequence's next value)
        dialect = context.dialect
        pooled = context.root_connection.connection
        # The pool entry's: the dialect's first statements run on a connection the pool has
        # not handed out yet, whose ``info`` is the driver's.
        info = pooled.record_info
        if info is None:
            # Detached from its pool: a guard of its own still fences the cancel off from
            # the next statement (only SQLite's interrupt in force is not remembered).
            guard = Guard()
        else:
            # The connection's statements follow one another in the thread that has it.
            guard = info.get(_GUARD_KEY)
            if guard is None:
                guard = info[_GUARD_KEY] = Guard()

        def execute() -> None:
            _skip.event = name
            try:
                for other in getattr(dialect.dispatch, name):
                    if other(cursor, statement, *args):
                        return
            finally:
                _skip.event = None
            getattr(dialect, name)(cursor, statement, *args)

        guard.run(pooled.dbapi_connection, execute)
        return True

    listener.__name__ = listener.__qualname__ = f"_cancellable_{name}"
    return listener


_LISTENERS = {name: _listener(name) for name in _EVENTS}
