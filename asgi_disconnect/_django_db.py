"""Django's database statements, cancelled on the server when their request is stopped.

All of Django's ORM is sync: sync views, ``sync_to_async`` calls and the async ORM run their
statements in threads, which nothing can cancel, so a request's coroutine stops and its
statement runs on. Every connection Django opens gets an execute wrapper (through the
``connection_created`` signal), which runs each statement through ``_statements.Guard``: when
the request is stopped, the statement is cancelled (PostgreSQL with psycopg 3 or psycopg2,
SQLite), and fails in its thread with Django's ``OperationalError``.

That error is the request being stopped, not a failure of the app's: nobody will read the
500 that Django makes of it. Django logs it on ``django.request``, with the exception and,
as its documentation says, the request in the record; a filter on that logger drops the
records whose exception is a statement the middleware cancelled, and only those. Django's
``got_request_exception`` signal is still sent for it: a signal cannot be filtered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ._statements import Guard, cancelled_by_us


def hook() -> None:
    """Wrap the statements of every connection Django opens from now on; filter its log."""
    from django.db.backends.signals import connection_created

    connection_created.connect(_created, weak=False, dispatch_uid=_created)
    logging.getLogger("django.request").addFilter(_FILTER)  # once: it is one object


def _created(sender: Any, connection: Any, **kwargs: Any) -> None:
    # Sent each time the connection (re)connects: one wrapper for its life.
    wrappers: list[Any] = connection.execute_wrappers
    if not any(isinstance(wrapper, _CancelOnStop) for wrapper in wrappers):
        # First, so outermost, and for good. Not through the execute_wrapper() context
        # manager: entered inside another wrapper's block (the connection opens on the first
        # statement, under a tracer's wrapper), its exit would take ours out in place of
        # the tracer's, which pops the last one.
        wrappers.insert(0, _CancelOnStop())


class _CancelOnStop:
    __slots__ = ("_guard",)

    def __init__(self) -> None:
        # One per connection, whose statements follow one another in the thread that owns it.
        self._guard = Guard()

    def __call__(
        self,
        execute: Callable[[str, Any, bool, dict[str, Any]], Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        # The driver's connection, which is what a cancel goes to (Django's opens it anew
        # after it closed).
        connection = context["connection"].connection
        return self._guard.run(connection, lambda: execute(sql, params, many, context))


class _NotForNobody(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and cancelled_by_us(record.exc_info[1]))


_FILTER = _NotForNobody()
