"""SQLAlchemy's sync engines: a stopped request's statement is cancelled on the server.

A Starlette app's ``def`` endpoint runs a long statement through a sync engine, in
Starlette's thread pool; the client leaves while it runs. On SQLite (a recursive CTE, through
``sqlite3.Connection.interrupt()``) and on PostgreSQL with psycopg 3 (``pg_sleep()``, gone
from ``pg_stat_activity``), the statement stops within a second instead of running on, the
pool's connection answers the next statement, and nothing is logged at ERROR. A statement run
after the response (a background task) runs to its end, and so does one under
``cancel_statements=False``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from communicator import communicate, http_scope
from postgres import running_postgres, wait_for
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_statements import SLOW_SQLITE

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._sqlalchemy import _LISTENERS, hook_if_imported
from asgi_disconnect._statements import cancelled_by_us
from asgi_disconnect._types import Scope

pytestmark = pytest.mark.anyio

PG_SLOW = "SELECT pg_sleep(10)"


class Outcome:
    """What the endpoint's statement did, as its thread saw it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.took: float | None = None


def app_for(engine: Engine, slow: str, outcome: Outcome, **options: Any) -> DisconnectMiddleware:
    def run_slow() -> None:
        start = time.monotonic()
        try:
            with engine.connect() as conn:
                outcome.started.set()
                conn.execute(text(slow)).fetchall()
        except BaseException as exc:
            outcome.error = exc
            raise  # as an app's endpoint lets it
        finally:
            outcome.took = time.monotonic() - start
            outcome.ended.set()

    def endpoint(request: Request) -> PlainTextResponse:  # a def endpoint: in a thread
        run_slow()
        return PlainTextResponse("ran to its end")

    def after(request: Request) -> PlainTextResponse:
        return PlainTextResponse("answered", background=BackgroundTask(run_slow))

    routes = [Route("/", endpoint, methods=["POST"]), Route("/after", after, methods=["POST"])]
    return DisconnectMiddleware(Starlette(routes=routes), **options)


def scope_for(path: str) -> Scope:
    return http_scope(path=path, raw_path=path.encode())


def select_one(engine: Engine) -> object:
    with engine.connect() as conn:
        return conn.execute(text("SELECT 1")).scalar()


def sqlite_engine(tmp_path: Path) -> Engine:
    # A file, so that the pool keeps connections (one, so the next request gets the same).
    return create_engine(
        f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=QueuePool, pool_size=1, max_overflow=0
    )


async def leave_while_running(app: DisconnectMiddleware, outcome: Outcome) -> float:
    """The client leaves once the statement runs; seconds until it ended."""
    async with communicate(app) as c:
        await c.send_body(b"")
        await anyio.to_thread.run_sync(outcome.started.wait, 5)
        await anyio.sleep(0.3)  # in the statement
        left = time.monotonic()
        await c.disconnect()
        await c.wait()
        assert c.error is None, c.error
    await anyio.to_thread.run_sync(outcome.ended.wait, 15)
    return time.monotonic() - left


async def test_sqlite_the_statement_of_a_request_whose_client_left_is_cancelled(
    anyio_backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sqlite_engine(tmp_path)
    try:
        outcome = Outcome()
        app = app_for(engine, SLOW_SQLITE, outcome)
        caplog.set_level(logging.INFO)
        took = await leave_while_running(app, outcome)
        assert took < 5  # well short of the statement's run
        assert isinstance(outcome.error, OperationalError), outcome.error
        assert cancelled_by_us(outcome.error)
        assert select_one(engine) == 1  # the pool's one connection, usable
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        engine.dispose()


#: A second or so on SQLite: long enough to leave during, short enough to run to its end.
MEDIUM_SQLITE = SLOW_SQLITE.replace("100000000", "4000000")


async def test_sqlite_a_statement_after_the_response_is_not_cancelled(
    anyio_backend: str, tmp_path: Path
) -> None:
    engine = sqlite_engine(tmp_path)
    try:
        outcome = Outcome()
        app = app_for(engine, MEDIUM_SQLITE, outcome)
        async with communicate(app, scope_for("/after")) as c:
            await c.send_body(b"")
            assert (await c.receive_output())["status"] == 200
            assert (await c.receive_output())["body"] == b"answered"
            await anyio.to_thread.run_sync(outcome.started.wait, 5)
            await anyio.sleep(0.3)  # the background task, in its statement
            await c.disconnect()
            await c.wait()
            assert c.error is None, c.error
        await anyio.to_thread.run_sync(outcome.ended.wait, 30)
        assert outcome.error is None  # ran to its end
        assert select_one(engine) == 1
    finally:
        engine.dispose()


async def test_sqlite_cancel_statements_false_leaves_the_statement_running(
    anyio_backend: str, tmp_path: Path
) -> None:
    engine = sqlite_engine(tmp_path)
    try:
        outcome = Outcome()
        app = app_for(engine, MEDIUM_SQLITE, outcome, cancel_statements=False)
        async with communicate(app) as c:
            await c.send_body(b"")
            await anyio.to_thread.run_sync(outcome.started.wait, 5)
            await anyio.sleep(0.3)
            await c.disconnect()
            await c.wait()
        await anyio.to_thread.run_sync(outcome.ended.wait, 30)
        assert outcome.error is None  # ran to its end
    finally:
        engine.dispose()


# -- PostgreSQL, psycopg 3 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[int]:
    with running_postgres() as port:
        yield port


def pg_running(engine: Engine) -> int:
    """How many of the other backends run ``pg_sleep()``."""
    import psycopg

    url = engine.url
    with psycopg.connect(host=url.host, port=url.port, user=url.username) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND pid <> pg_backend_pid() AND query LIKE %s",
            ("SELECT pg_sleep%",),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(params=["psycopg", "psycopg2"])
def pg_engine(postgres: int, request: pytest.FixtureRequest) -> Iterator[Engine]:
    pytest.importorskip(request.param)
    engine = create_engine(
        f"postgresql+{request.param}://postgres@127.0.0.1:{postgres}/postgres",
        pool_size=1,
        max_overflow=0,
        pool_timeout=5,
    )
    try:
        yield engine
    finally:
        engine.dispose()


async def test_postgres_the_statement_of_a_request_whose_client_left_is_cancelled(
    anyio_backend: str, pg_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = Outcome()
    app = app_for(pg_engine, PG_SLOW, outcome)
    caplog.set_level(logging.INFO)
    async with communicate(app) as c:
        await c.send_body(b"")
        await anyio.to_thread.run_sync(outcome.started.wait, 5)
        running = await anyio.to_thread.run_sync(
            lambda: wait_for(lambda: pg_running(pg_engine), 10)
        )
        assert running, (outcome.error, outcome.ended.is_set())
        left = time.monotonic()
        await c.disconnect()
        await c.wait()
        assert c.error is None, c.error
        assert await anyio.to_thread.run_sync(
            lambda: wait_for(lambda: not pg_running(pg_engine), 5)
        )
        assert time.monotonic() - left < 5  # gone from pg_stat_activity, not after the 10 s
    await anyio.to_thread.run_sync(outcome.ended.wait, 5)
    assert isinstance(outcome.error, OperationalError), outcome.error
    assert cancelled_by_us(outcome.error)
    assert select_one(pg_engine) == 1  # the pool's one connection, usable again
    assert pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_postgres_a_statement_after_the_response_is_not_cancelled(
    anyio_backend: str, pg_engine: Engine
) -> None:
    outcome = Outcome()
    app = app_for(pg_engine, "SELECT pg_sleep(1)", outcome)
    async with communicate(app, scope_for("/after")) as c:
        await c.send_body(b"")
        assert (await c.receive_output())["status"] == 200
        await anyio.to_thread.run_sync(outcome.started.wait, 5)
        await anyio.sleep(0.3)
        await c.disconnect()
        await c.wait()
    await anyio.to_thread.run_sync(outcome.ended.wait, 15)
    assert outcome.error is None
    assert select_one(pg_engine) == 1


# -- the hook ----------------------------------------------------------------------------------


def test_the_hook_is_added_once_and_other_listeners_run_inside_it(tmp_path: Path) -> None:
    import asgi_disconnect._sqlalchemy as module

    hook_if_imported()
    module._hooked = False  # as if a second middleware looked again
    hook_if_imported()
    for name, listener in _LISTENERS.items():
        assert event.contains(Engine, name, listener)
    engine = sqlite_engine(tmp_path)
    seen: list[str] = []

    def instead(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        seen.append(statement)
        if statement != "SELECT 2":
            return False
        cursor.execute("SELECT 3")  # executes it in the dialect's place
        return True

    event.listen(engine, "do_execute", instead)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            assert conn.execute(text("SELECT 2")).scalar() == 3
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")  # no parameters
            conn.exec_driver_sql("INSERT INTO t VALUES (?)", [(1,), (2,)])  # executemany
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
            conn.connection.detach()  # out of the pool: a guard of its own
            assert conn.execute(text("SELECT 4")).scalar() == 4
        assert seen[:2] == ["SELECT 1", "SELECT 2"]
    finally:
        engine.dispose()
    # A statement outside an execution has no context: it only runs.
    assert _LISTENERS["do_execute"](None, "SELECT 1", (), None) is False


def test_without_sqlalchemy_imported_nothing_is_hooked(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import asgi_disconnect._sqlalchemy as module

    monkeypatch.setattr(module, "_hooked", False)
    monkeypatch.delitem(sys.modules, "sqlalchemy.engine")
    hook_if_imported()
    assert module._hooked is False
