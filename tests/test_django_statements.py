"""Django's statements, cancelled on the database server when their request is stopped.

Under uvicorn against a real PostgreSQL (served.djsite, psycopg 3): the statement of a
request whose client left is gone from ``pg_stat_activity`` at once, the transaction is rolled
back, the connection usable, Django's ``request_finished`` sent, and nothing logged.
In-process against SQLite, through ``sqlite3.Connection.interrupt()``, likewise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from postgres import running_postgres, wait_for
from servers import Events, Server, http_request, new_id

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "served.djsite.settings")

import django
from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application
from django.core.signals import request_finished

from asgi_disconnect import DisconnectMiddleware

#: Seconds from the client leaving to its statement being gone from the server, by view.
LATENCIES: dict[str, list[float]] = {}


# -- PostgreSQL, under uvicorn ---------------------------------------------------------------


class Site:
    def __init__(self, server: Server, events: Events, port: int) -> None:
        self.server = server
        self.events = events
        self.port = port

    def query(self, sql: str, *params: object) -> Any:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres") as conn:
            row = conn.execute(sql, params).fetchone()
        return row[0] if row else None

    def running(self, rid: str) -> bool:
        """Whether a statement of request ``rid`` is running on the server."""
        return bool(
            self.query(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND pid <> pg_backend_pid() AND query LIKE %s",
                f"%id={rid} %",
            )
        )

    def open(self, path: str, rid: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=30)
        separator = "&" if "?" in path else "?"
        sock.sendall(http_request("GET", f"{path}{separator}id={rid}"))
        return sock

    def leave_while_running(self, path: str) -> tuple[str, float]:
        """Leave once the statement runs; the id and the seconds until it was gone."""
        rid = new_id("st")
        sock = self.open(path, rid)
        try:
            self.events.wait(rid, "started")
            assert wait_for(lambda: self.running(rid), 10)
        finally:
            sock.close()
        left = time.monotonic()
        while self.running(rid) and time.monotonic() - left < 15:
            time.sleep(0.01)
        return rid, time.monotonic() - left


def response_of(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


@contextmanager
def serve(tmp: Path, port: int, **env: str) -> Iterator[Site]:
    events = Events(tmp / "events")
    env = {"ASGI_DISCONNECT_EVENTS": str(events.path), "SERVED_POSTGRES_PORT": str(port), **env}
    server = Server("uvicorn-httptools", "served.djsite.asgi:application", env, tmp / "log")
    import psycopg

    # Made here once: requests that make it at the same moment would collide on a new database.
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marks (rid varchar(100))")
    server.start()
    try:
        yield Site(server, events, port)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[int]:
    with running_postgres() as port:
        yield port


@pytest.fixture(scope="module")
def site(postgres: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with serve(tmp_path_factory.mktemp("site"), postgres) as site:
        yield site


@pytest.fixture(scope="module")
def psycopg2_site(postgres: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    pytest.importorskip("psycopg2")
    tmp = tmp_path_factory.mktemp("psycopg2-site")
    with serve(tmp, postgres, SERVED_POSTGRES_DRIVER="psycopg2") as site:
        yield site


def assert_nothing_logged(site: Site) -> None:
    output = site.server.output()
    assert site.server.errors() == [], output
    assert "Internal Server Error" not in output, output


@pytest.mark.servers
@pytest.mark.parametrize("view", ["statement-sync", "statement-async"])
def test_the_statement_of_a_request_whose_client_left_is_cancelled(site: Site, view: str) -> None:
    finished = site.events.count("request_finished")
    rid, gone_after = site.leave_while_running(f"/{view}")
    LATENCIES.setdefault(view, []).append(gone_after)
    assert gone_after < 0.3
    site.events.wait(rid, "statement-failed")
    # Rolled back, and the connection answered the next statement.
    site.events.wait(rid, "marks-after-rollback:0")
    assert site.query("SELECT count(*) FROM marks WHERE rid = %s", rid) == 0
    assert wait_for(lambda: site.events.count("request_finished") == finished + 1)
    assert "finished" not in site.events.of(rid)
    assert_nothing_logged(site)


@pytest.mark.servers
def test_the_async_orms_statement_of_a_request_whose_client_left_is_cancelled(site: Site) -> None:
    finished = site.events.count("request_finished")
    rid, gone_after = site.leave_while_running("/statement-orm")
    LATENCIES.setdefault("statement-orm", []).append(gone_after)
    assert gone_after < 0.3
    # Django cancels the view's coroutine itself: the statement's error stays in its thread.
    assert wait_for(lambda: site.events.count("request_finished") == finished + 1)
    assert "finished" not in site.events.of(rid)
    assert_answered_by_the_orm(site)
    assert_nothing_logged(site)


def assert_answered_by_the_orm(site: Site) -> None:
    rid = new_id("st")
    sock = site.open("/statement-orm?seconds=0.01", rid)
    try:
        assert response_of(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.close()
    site.events.wait(rid, "finished")


@pytest.mark.servers
@pytest.mark.parametrize("view", ["statement-sync", "statement-async", "statement-orm"])
def test_with_psycopg2_the_statement_of_a_request_whose_client_left_is_cancelled(
    psycopg2_site: Site, view: str
) -> None:
    rid, gone_after = psycopg2_site.leave_while_running(f"/{view}")
    LATENCIES.setdefault(f"{view} psycopg2", []).append(gone_after)
    assert gone_after < 0.3
    events = psycopg2_site.events
    assert "driver:psycopg2" in events.of(rid)
    if view != "statement-orm":  # there, Django's cancellation of the view takes its place
        events.wait(rid, "statement-failed")
    assert "finished" not in events.of(rid)
    assert_answered_by_the_orm(psycopg2_site)
    assert_nothing_logged(psycopg2_site)


@pytest.mark.servers
def test_behind_a_sync_only_middleware_too_nothing_is_logged_but_the_apps_own_errors(
    postgres: int, tmp_path: Path
) -> None:
    # Django runs a sync-only middleware and the view in one thread, its error handling too.
    with serve(tmp_path, postgres, SERVED_SYNC_MIDDLEWARE="1") as site:
        rid, gone_after = site.leave_while_running("/statement-sync")
        assert gone_after < 0.3
        site.events.wait(rid, "marks-after-rollback:0")
        assert_nothing_logged(site)
        # An error of the app's own is logged as ever.
        sock = site.open("/statement-sync?seconds=nan-seconds", new_id("st"))
        try:
            assert response_of(sock).startswith(b"HTTP/1.1 500 ")
        finally:
            sock.close()
        assert wait_for(lambda: "Internal Server Error" in site.server.output())


def test_djangos_log_drops_the_errors_of_cancelled_statements_and_only_those(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # asgiref drops what a cancelled view's thread raised: the error reaches Django's handler
    # only when the thread ends before the view's coroutine is cancelled (a race). Then
    # Django logs it, with the exception in the record, and the filter drops it.
    from django.db import OperationalError
    from django.db.backends.signals import connection_created

    from asgi_disconnect._django_db import hook
    from asgi_disconnect._statements import CANCELLED_MARK

    hook()
    ours, theirs = OperationalError("canceling statement"), OperationalError("disk full")
    setattr(ours, CANCELLED_MARK, True)
    raised_from_ours = RuntimeError("the app's own, for a failed statement")
    raised_from_ours.__cause__ = ours
    while_handling_ours = RuntimeError("failed while handling it")
    while_handling_ours.__context__ = ours
    logger = logging.getLogger("django.request")
    for error in (ours, theirs, raised_from_ours, while_handling_ours):
        logger.error("Internal Server Error: %s", str(error), exc_info=error)
    assert [r.exc_info[1] for r in caplog.records if r.exc_info] == [theirs, while_handling_ours]
    assert connection_created.has_listeners()


@pytest.mark.servers
def test_a_sync_view_in_a_long_statement_answers_504_at_its_deadline(site: Site) -> None:
    rid = new_id("st")
    sent = time.monotonic()
    sock = site.open("/timeout/statement-sync", rid)
    try:
        response = response_of(sock)
    finally:
        sock.close()
    took = time.monotonic() - sent
    assert response.startswith(b"HTTP/1.1 504 "), response
    assert 0.9 < took < 5  # not the statement's 10 s
    site.events.wait(rid, "marks-after-rollback:0")
    assert not site.running(rid)
    assert_nothing_logged(site)


@pytest.mark.servers
def test_a_grace_period_delays_the_cancel(site: Site) -> None:
    # /grace: 0.5 s for the view once it has been told.
    rid, gone_after = site.leave_while_running("/grace/statement-sync")
    assert gone_after >= 0.45
    assert gone_after < 0.5 + 0.3
    site.events.wait(rid, "marks-after-rollback:0")
    assert_nothing_logged(site)


@pytest.mark.servers
def test_with_cancel_statements_off_the_statement_runs_to_its_end(site: Site) -> None:
    rid = new_id("st")
    sock = site.open("/keep/statement-sync?seconds=1.5", rid)
    site.events.wait(rid, "started")
    sock.close()
    time.sleep(0.5)
    assert site.running(rid)
    site.events.wait(rid, "finished")
    assert "statement-failed" not in site.events.of(rid)


@pytest.mark.servers
def test_a_statement_run_after_the_response_is_left_alone(site: Site) -> None:
    rid = new_id("st")
    sock = site.open("/statement-after?seconds=1", rid)
    try:
        received = b""
        while b"answered" not in received:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    finally:
        sock.close()  # then the client leaves, while the statement runs
    site.events.wait(rid, "started")
    site.events.wait(rid, "finished")
    assert "statement-failed" not in site.events.of(rid)


@pytest.mark.servers
def test_under_load_only_the_statements_of_abandoned_requests_are_cancelled(
    postgres: int, tmp_path: Path
) -> None:
    """Requests of several statements each share a pool of 5; half of them are abandoned."""
    if django.VERSION < (5, 1):
        pytest.skip("Django's connection pool needs Django >= 5.1")
    pytest.importorskip("psycopg_pool")
    requests = 200
    rng = random.Random(19)
    with serve(tmp_path, postgres, SERVED_POSTGRES_POOL="5") as site:
        answers: dict[str, bytes] = {}
        abandoned: list[str] = []

        def one(index: int) -> None:
            rid = f"load{index}x{rng.randrange(10**6)}"
            leave = index % 2 == 1
            sock = site.open("/statement-sync?seconds=0.02&count=5", rid)
            try:
                if leave:
                    abandoned.append(rid)
                    time.sleep(rng.uniform(0, 0.3))  # queued for the pool, or in any statement
                else:
                    answers[rid] = response_of(sock)
            finally:
                sock.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
        for batch in range(0, requests, 20):
            for thread in threads[batch : batch + 20]:
                thread.start()
            for thread in threads[batch : batch + 20]:
                thread.join(60)
        assert len(answers) == requests // 2
        for rid, response in answers.items():
            assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(
                b"\r\n4\r\ndone\r\n0\r\n\r\n"
            ), rid
            assert "statement-failed" not in site.events.of(rid), rid
        cancelled = [rid for rid in abandoned if "statement-failed" in site.events.of(rid)]
        assert cancelled  # some were left in a statement
        # The pool is whole: a fresh request gets its connection and its answer.
        sock = site.open("/statement-sync?seconds=0", new_id("st"))
        try:
            assert response_of(sock).endswith(b"\r\ndone\r\n0\r\n\r\n")
        finally:
            sock.close()
        assert_nothing_logged(site)


# -- SQLite, in-process ----------------------------------------------------------------------


@pytest.fixture
def sqlite_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Events:
    path = tmp_path / "events"
    monkeypatch.setenv("ASGI_DISCONNECT_EVENTS", str(path))
    return Events(path)


def django_scope(path: str) -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("view", ["statement-sync", "statement-async"])
async def test_sqlite_statements_are_interrupted(
    sqlite_events: Events, caplog: pytest.LogCaptureFixture, view: str
) -> None:
    finished: list[object] = []

    def on_finished(sender: object, **kwargs: object) -> None:
        finished.append(sender)

    request_finished.connect(on_finished)
    try:
        rid = new_id("lite")
        application = DisconnectMiddleware(get_asgi_application())
        communicator = ApplicationCommunicator(application, django_scope(f"/{view}?id={rid}"))
        await communicator.send_input({"type": "http.request"})
        await asyncio.to_thread(sqlite_events.wait, rid, "started")
        await asyncio.sleep(0.1)  # in the statement
        left = time.monotonic()
        await communicator.send_input({"type": "http.disconnect"})
        await asyncio.to_thread(sqlite_events.wait, rid, "statement-failed")
        took = time.monotonic() - left
        await asyncio.to_thread(sqlite_events.wait, rid, "marks-after-rollback:0")
        await communicator.wait(5)
    finally:
        request_finished.disconnect(on_finished)
    assert took < 5  # not the statement's 10 s
    assert len(finished) == 1
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []


def test_a_connection_that_reconnects_keeps_one_wrapper() -> None:
    # connection_created is sent at each connect: the wrapper goes in once, for good.
    from django.db import connection
    from django.db.backends.signals import connection_created

    from asgi_disconnect._django_db import _CancelOnStop, hook

    hook()
    for _ in range(2):
        connection_created.send(sender=type(connection), connection=connection)
    ours = [w for w in connection.execute_wrappers if isinstance(w, _CancelOnStop)]
    assert len(ours) == 1
