"""Each driver's cancel, from another thread, of the statement its connection runs.

The request is stood in for by its ``Stop``, as a thread sees it in the request's context.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import pytest
from postgres import running_postgres

from asgi_disconnect._statements import CANCELLED_MARK, Guard, cancelled_by_us
from asgi_disconnect._stop import Stop, current

SLOW_SQLITE = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) "
    "SELECT count(*) FROM c"
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[int]:
    with running_postgres() as port:
        yield port


def connect(driver: str, port: int | None) -> tuple[Any, str]:
    """A driver's connection, and a statement that runs for a long time on it."""
    if driver == "sqlite":
        return sqlite3.connect(":memory:", check_same_thread=False), SLOW_SQLITE
    if driver == "psycopg":
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=port, user="postgres"), "SELECT pg_sleep(10)"
    psycopg2 = pytest.importorskip("psycopg2")
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres")
    return conn, "SELECT pg_sleep(10)"


def run_in_a_thread(stop: Stop, call: Callable[[], object]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        current.set(stop)  # the request's context, as asgiref and anyio carry it
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("driver", ["sqlite", "psycopg", "psycopg2"])
def test_a_stopped_requests_statement_is_cancelled_and_the_connection_usable(
    request: pytest.FixtureRequest, driver: str
) -> None:
    port = None if driver == "sqlite" else request.getfixturevalue("postgres")
    conn, slow = connect(driver, port)
    try:
        guard, stop = Guard(), Stop()
        cursor = conn.cursor()
        thread, outcome = run_in_a_thread(
            stop, lambda: guard.run(conn, lambda: cursor.execute(slow))
        )
        time.sleep(0.3)  # in the statement
        stopped = time.monotonic()
        stop.stop()
        thread.join(5)
        took = time.monotonic() - stopped
        assert not thread.is_alive()
        [error] = outcome
        assert isinstance(error, Exception) and getattr(error, CANCELLED_MARK)
        assert cancelled_by_us(error)
        assert took < 5  # well short of the statement's run
        if driver != "sqlite":
            conn.rollback()
        cursor = conn.cursor()
        cursor.execute("SELECT 1")
        assert cursor.fetchone()[0] == 1
    finally:
        conn.close()


def test_a_statement_that_ended_is_not_cancelled_and_one_after_the_stop_runs() -> None:
    with closing(sqlite3.connect(":memory:", check_same_thread=False)) as conn:
        guard, stop = Guard(), Stop()
        thread, outcome = run_in_a_thread(
            stop, lambda: guard.run(conn, lambda: conn.execute("SELECT 1").fetchone())
        )
        thread.join(5)
        stop.stop()  # nothing runs on the connection now
        thread, after = run_in_a_thread(
            stop, lambda: guard.run(conn, lambda: conn.execute("SELECT 2").fetchone())
        )
        thread.join(5)
        assert outcome == [(1,)] and after == [(2,)]


def test_outside_a_request_or_when_turned_off_or_for_another_driver_it_only_runs() -> None:
    with closing(sqlite3.connect(":memory:")) as conn:
        guard = Guard()
        assert guard.run(conn, lambda: conn.execute("SELECT 1").fetchone()) == (1,)
        token = current.set(Stop(cancels_statements=False))
        try:
            assert guard.run(conn, lambda: conn.execute("SELECT 2").fetchone()) == (2,)
        finally:
            current.reset(token)
        token = current.set(Stop())
        try:
            assert guard.run(object(), lambda: 3) == 3
        finally:
            current.reset(token)


def test_a_cancel_that_fails_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(sqlite3.Connection):
        def interrupt(self) -> None:
            raise sqlite3.ProgrammingError("closed")

    with closing(sqlite3.connect(":memory:", factory=Broken, check_same_thread=False)) as conn:
        guard, stop = Guard(), Stop()
        started = threading.Event()

        def slow() -> object:
            started.set()
            time.sleep(0.3)
            return "ran to its end"

        thread, outcome = run_in_a_thread(stop, lambda: guard.run(conn, slow))
        started.wait(5)
        stop.stop()
        thread.join(5)
        assert outcome == ["ran to its end"]
        assert "could not cancel" in caplog.text


@pytest.mark.parametrize("driver", ["sqlite", "psycopg"])
def test_a_statement_that_fails_on_its_own_while_cancelled_is_the_apps_failure(
    request: pytest.FixtureRequest, driver: str
) -> None:
    # The stop comes as the statement starts; the statement fails for a reason of its own.
    port = None if driver == "sqlite" else request.getfixturevalue("postgres")
    conn, _ = connect(driver, port)
    try:
        guard, stop = Guard(), Stop()

        def failing() -> object:
            stop.stop()  # its cancel is sent, or in flight
            return conn.cursor().execute("SELECT * FROM no_such_table")

        thread, outcome = run_in_a_thread(stop, lambda: guard.run(conn, failing))
        thread.join(5)
        [error] = outcome
        assert isinstance(error, Exception)
        canceled = type(error).__name__ in {"QueryCanceled"}  # the cancel may win on PostgreSQL
        assert cancelled_by_us(error) is canceled
    finally:
        conn.close()


def test_statements_that_sqlites_interrupt_still_fails_are_the_cancellation() -> None:
    # A cursor the request still reads keeps SQLite's interrupt in force: the request's next
    # statement fails as interrupted too, and is marked as the cancellation, not its failure.
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
    guard, stop = Guard(), Stop()
    errors: list[BaseException] = []

    def view() -> None:
        reading = conn.execute("SELECT x FROM t")  # as QuerySet.iterator() leaves one open
        reading.fetchone()
        try:
            guard.run(conn, lambda: conn.execute(SLOW_SQLITE))
        except sqlite3.OperationalError as exc:
            errors.append(exc)
        try:  # its clean-up, after the stop
            guard.run(conn, lambda: conn.execute("INSERT INTO t VALUES (-1)"))
        except sqlite3.OperationalError as exc:
            errors.append(exc)
        reading.close()

    thread, outcome = run_in_a_thread(stop, view)
    time.sleep(0.3)  # in the statement
    stop.stop()
    thread.join(5)
    assert outcome == [None]
    assert [str(exc) for exc in errors] == ["interrupted", "interrupted"]
    assert all(cancelled_by_us(exc) for exc in errors)
    # Another request's statement on the connection, once the cursor is closed, runs.
    other = Stop()
    thread, after = run_in_a_thread(
        other, lambda: guard.run(conn, lambda: conn.execute("SELECT count(*) FROM t").fetchone())
    )
    thread.join(5)
    assert after == [(100,)]
    conn.close()


def test_a_statement_after_the_stop_that_fails_on_its_own_is_the_apps_failure() -> None:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    guard, stop = Guard(), Stop()
    stop.stop()
    thread, outcome = run_in_a_thread(
        stop, lambda: guard.run(conn, lambda: conn.execute("SELECT * FROM no_such_table"))
    )
    thread.join(5)
    [error] = outcome
    assert isinstance(error, sqlite3.OperationalError) and not cancelled_by_us(error)
    conn.close()


def test_a_cancel_that_comes_once_its_statement_ended_sends_nothing() -> None:
    # libpq's cancel is sent from a thread of its own, which may start once the statement has
    # ended and the connection runs another, or nothing: it must cancel neither.
    from asgi_disconnect._statements import _Statement

    sent: list[str] = []
    guard = Guard()
    statement = _Statement(guard, Stop(), lambda: sent.append("cancel"), True)
    statement._send()  # the connection runs no statement of its, or another's
    assert sent == [] and not statement.cancelled


def test_a_long_chain_of_errors_is_read_no_further_than_ten() -> None:
    from asgi_disconnect._statements import _is_a_cancel

    error: BaseException = sqlite3.OperationalError("interrupted")
    for _ in range(10):
        outer = RuntimeError("wrapped")
        outer.__cause__ = error
        error = outer
    assert not _is_a_cancel(error)
    assert _is_a_cancel(error.__cause__)  # type: ignore[arg-type]
