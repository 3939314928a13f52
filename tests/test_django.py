"""Django behind the middleware, on whichever Django is installed.

``test_django_versions.py`` runs this module again under Django 4.2 (which does not listen for
disconnects after the body) and the newest Django.
"""

from __future__ import annotations

import asyncio
import gc
import glob
import os
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from postgres import running_postgres
from served._common import recorded
from servers import Events, Server, http_request, new_id

from asgi_disconnect import DisconnectMiddleware

pytestmark = pytest.mark.anyio

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "served.djsite.settings")

import django  # noqa: E402
from asgiref.testing import ApplicationCommunicator  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.signals import request_finished  # noqa: E402

# What a server may get in place of Django's response, and drops: the middleware's answer
# for what wraps it (see Exchange.answer_for_the_app).
UNANSWERED = [
    {"type": "http.response.start", "status": 499, "headers": []},
    {"type": "http.response.body", "body": b""},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Django runs on asyncio only


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Events:
    path = tmp_path / "events"
    monkeypatch.setenv("ASGI_DISCONNECT_EVENTS", str(path))
    return Events(path)


@pytest.fixture
def application() -> DisconnectMiddleware:
    return DisconnectMiddleware(get_asgi_application())


def scope(method: str, path: str, rid: str = "-") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": f"id={rid}".encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def outputs(communicator: ApplicationCommunicator, timeout: float = 1.0) -> list[Any]:
    received = []
    while True:
        try:
            received.append(await communicator.receive_output(timeout))
        except asyncio.TimeoutError:
            return received


# -- Django's regression tests for ticket 33738, with the middleware in front ------------------
# The first four are Django's own (tests/asgi/tests.py), on views like Django's: "/" answers at
# once, "/delayed-hello" sleeps a second in a thread. Django >= 5 passes them on its own;
# Django 4.2 passes them only behind the middleware. The server's side may see the
# middleware's 499 answer, which real servers drop; Django's own response must never come.


async def test_disconnect(application: DisconnectMiddleware) -> None:
    communicator = ApplicationCommunicator(application, scope("GET", "/"))
    await communicator.send_input({"type": "http.disconnect"})
    assert await outputs(communicator) in ([], UNANSWERED)
    await communicator.wait(5)


async def test_disconnect_both_return(application: DisconnectMiddleware) -> None:
    # The disconnect arrives as the response is sent: the response is complete, and nothing
    # is cancelled.
    communicator = ApplicationCommunicator(application, scope("POST", "/"))
    await communicator.send_input({"type": "http.request", "body": b"some body"})
    assert (await communicator.receive_output(5))["status"] == 200
    assert (await communicator.receive_output(5))["body"] == b"Hello World!"
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(5)


async def test_disconnect_with_body(application: DisconnectMiddleware) -> None:
    communicator = ApplicationCommunicator(application, scope("POST", "/"))
    await communicator.send_input({"type": "http.request", "body": b"some body"})
    await communicator.send_input({"type": "http.disconnect"})
    assert await outputs(communicator) in ([], UNANSWERED)
    await communicator.wait(5)


async def test_delayed_disconnect_with_body(application: DisconnectMiddleware) -> None:
    communicator = ApplicationCommunicator(application, scope("POST", "/delayed-hello"))
    await communicator.send_input({"type": "http.request", "body": b"some body"})
    await communicator.send_input({"type": "http.disconnect"})
    assert await outputs(communicator, 1.5) in ([], UNANSWERED)
    await communicator.wait(5)


async def test_a_request_with_a_body_then_a_disconnect_gets_no_response(
    application: DisconnectMiddleware, events: Events
) -> None:
    rid = new_id("django")
    communicator = ApplicationCommunicator(application, scope("POST", "/work", rid))
    await communicator.send_input({"type": "http.request", "body": b"some body"})
    await communicator.send_input({"type": "http.disconnect"})
    assert await outputs(communicator) in ([], UNANSWERED)
    await communicator.wait(5)
    assert "finished" not in events.of(rid)


async def test_a_sync_view_that_sleeps_gets_its_whole_body_and_sends_nothing(
    application: DisconnectMiddleware, events: Events
) -> None:
    rid = new_id("django")
    communicator = ApplicationCommunicator(application, scope("POST", "/sleepy-sync", rid))
    await communicator.send_input({"type": "http.request", "body": b"Body data!"})
    await asyncio.to_thread(events.wait, rid, "started")
    await communicator.send_input({"type": "http.disconnect"})
    # A thread cannot be cancelled: it runs to its end, with the whole body to read.
    await asyncio.to_thread(events.wait, rid, "finished-with-body:10")
    assert await outputs(communicator) in ([], UNANSWERED)
    await communicator.wait(5)


@pytest.mark.parametrize("leaves_before_the_answer", [True, False])
async def test_an_async_view_is_cancelled_when_and_only_when_the_client_left_first(
    application: DisconnectMiddleware, events: Events, leaves_before_the_answer: bool
) -> None:
    rid = new_id("django")
    communicator = ApplicationCommunicator(application, scope("GET", "/quick", rid))
    await communicator.send_input({"type": "http.request"})
    if leaves_before_the_answer:
        await asyncio.to_thread(events.wait, rid, "started")
        await communicator.send_input({"type": "http.disconnect"})
        assert await outputs(communicator) in ([], UNANSWERED)
        await communicator.wait(5)
        assert "cancelled" in events.of(rid)
    else:
        assert (await communicator.receive_output(5))["status"] == 200
        assert (await communicator.receive_output(5))["body"] == b"done"
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(5)
        assert "finished" in events.of(rid)
        assert "cancelled" not in events.of(rid)


async def test_a_cancelled_view_fires_request_finished_and_leaves_no_task(
    application: DisconnectMiddleware, events: Events
) -> None:
    finished: list[str] = []

    def on_finished(**kwargs: object) -> None:
        finished.append("request_finished")

    request_finished.connect(on_finished)
    before = asyncio.all_tasks()
    try:
        rid = new_id("django")
        communicator = ApplicationCommunicator(application, scope("GET", "/work", rid))
        await communicator.send_input({"type": "http.request"})
        await asyncio.to_thread(events.wait, rid, "started")
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(5)
        leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
        assert {task for task in leftover if not task.done()} == set()
    finally:
        request_finished.disconnect(on_finished)
    assert "cancelled" in events.of(rid)
    assert finished == ["request_finished"]


# -- database connections after abandoned requests, under uvicorn --------------------------


def sqlite_connections(pid: int, database: Path) -> int:
    count = 0
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            if os.readlink(fd) == str(database):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def abandon_all(server: Server, events: Events, path: str, count: int) -> None:
    """Open ``count`` requests, ten at a time, and leave each once its view works."""
    done = 0
    while done < count:
        rids = [new_id("db") for _ in range(min(10, count - done))]
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=15) for _ in rids]
        try:
            for sock, rid in zip(socks, rids, strict=True):
                sock.sendall(http_request("GET", f"{path}?id={rid}"))
            for rid in rids:
                events.wait(rid, "started")
        finally:
            for sock in socks:
                sock.close()
        for rid in rids:
            events.wait(rid, "cancelled")
        done += len(rids)


def wait_for(predicate: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# In front of Django: the middleware, or the middleware, then Channels' router or a plain
# wrapper (served.djsite.asgi).
FRONTS = pytest.mark.parametrize(
    "front", ["", "/channels", "/passthrough"], ids=lambda f: f or "direct"
)


@pytest.mark.servers
@FRONTS
def test_sqlite_connections_are_closed_after_100_abandoned_requests(
    tmp_path: Path, front: str
) -> None:
    events = Events(tmp_path / "events")
    database = tmp_path / "db.sqlite3"
    env = {"ASGI_DISCONNECT_EVENTS": str(events.path), "SERVED_SQLITE": str(database)}
    server = Server("uvicorn-httptools", "served.djsite.asgi:application", env, tmp_path / "log")
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        baseline = sqlite_connections(pid, database)
        abandon_all(server, events, f"{front}/db", 100)
        assert wait_for(lambda: sqlite_connections(pid, database) == baseline), (
            f"{sqlite_connections(pid, database)} connections open, {baseline} before"
        )
        assert wait_for(lambda: events.count("request_finished") == 100)
    finally:
        server.stop()
    assert server.errors() == [], server.output()


@pytest.fixture
def postgres() -> Iterator[int]:
    with running_postgres() as port:
        yield port


@pytest.mark.servers
@FRONTS
def test_postgresql_connections_are_closed_after_100_abandoned_requests(
    tmp_path: Path, postgres: int, front: str
) -> None:
    import psycopg

    def connections() -> int:
        with psycopg.connect(host="127.0.0.1", port=postgres, user="postgres") as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'djsite'"
            ).fetchone()
        return int(row[0]) if row else 0

    events = Events(tmp_path / "events")
    env = {"ASGI_DISCONNECT_EVENTS": str(events.path), "SERVED_POSTGRES_PORT": str(postgres)}
    server = Server("uvicorn-httptools", "served.djsite.asgi:application", env, tmp_path / "log")
    server.start()
    try:
        baseline = connections()
        abandon_all(server, events, f"{front}/db", 100)
        assert wait_for(lambda: connections() == baseline), (
            f"{connections()} open, {baseline} before"
        )
        assert wait_for(lambda: events.count("request_finished") == 100)
    finally:
        server.stop()
    assert server.errors() == [], server.output()


def test_this_is_the_django_expected() -> None:
    expected = os.environ.get("ASGI_DISCONNECT_DJANGO")
    if expected is None:
        pytest.skip("run by test_django_versions.py with a Django of its choosing")
    assert django.get_version().startswith(expected), django.get_version()
    assert sys.version_info >= (3, 10)


# -- request_finished and the body file, whatever sits in front of Django ------------------


class Passthrough:
    """A wrapper between the middleware and Django, as Sentry's and OpenTelemetry's are."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def wrapped(how: str) -> DisconnectMiddleware:
    django_app = get_asgi_application()
    if how == "channels":
        from channels.routing import ProtocolTypeRouter

        return DisconnectMiddleware(ProtocolTypeRouter({"http": django_app}))
    if how == "passthrough":
        return DisconnectMiddleware(Passthrough(django_app))
    return DisconnectMiddleware(django_app)


@contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    before = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, before)


@contextmanager
def counting_request_finished() -> Iterator[list[object]]:
    finished: list[object] = []

    def on_finished(sender: object, **kwargs: object) -> None:
        finished.append(sender)

    request_finished.connect(on_finished)
    try:
        yield finished
    finally:
        request_finished.disconnect(on_finished)


@pytest.mark.parametrize("how", ["direct", "channels", "passthrough"])
async def test_an_abandoned_request_is_finished_once_and_its_body_file_closed(
    events: Events, how: str
) -> None:
    from served.djsite.views import HELD

    rid = new_id("django")
    before = asyncio.all_tasks()
    with counting_request_finished() as finished:
        communicator = ApplicationCommunicator(wrapped(how), scope("POST", "/held", rid))
        await communicator.send_input({"type": "http.request", "body": b"some body"})
        await asyncio.to_thread(events.wait, rid, "started")
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(5)
        leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
        assert {task for task in leftover if not task.done()} == set()
    assert "cancelled" in events.of(rid)
    assert len(finished) == 1
    assert HELD.pop(rid)._stream.closed


@pytest.mark.parametrize("how", ["direct", "channels", "passthrough"])
async def test_a_request_that_django_answers_is_finished_once(how: str) -> None:
    with counting_request_finished() as finished:
        communicator = ApplicationCommunicator(wrapped(how), scope("POST", "/"))
        await communicator.send_input({"type": "http.request", "body": b"some body"})
        assert (await communicator.receive_output(5))["status"] == 200
        assert (await communicator.receive_output(5))["body"] == b"Hello World!"
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(5)
    assert len(finished) == 1


class WrapsReceive:
    """A wrapper between the middleware and Django that wraps receive(), as tracers do."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def traced_receive() -> Any:
            return await receive()

        await self.app(scope, traced_receive, send)


@pytest.mark.parametrize("receive_wrapped", [False, True], ids=["receive", "wrapped-receive"])
async def test_a_request_abandoned_mid_body_is_never_begun(
    events: Events, receive_wrapped: bool
) -> None:
    # Django's body reader is handed the disconnect, however deep in wrappers: it closes its
    # body file, and the request is never begun.
    opened: list[Any] = []
    real = tempfile.SpooledTemporaryFile

    def spooled(*args: Any, **kwargs: Any) -> Any:
        opened.append(real(*args, **kwargs))
        return opened[-1]

    rid = new_id("django")
    django_app = get_asgi_application()
    app = DisconnectMiddleware(WrapsReceive(django_app) if receive_wrapped else django_app)
    with (
        counting_request_finished() as finished,
        patched(tempfile, "SpooledTemporaryFile", spooled),
    ):
        communicator = ApplicationCommunicator(app, scope("POST", "/held", rid))
        await communicator.send_input({"type": "http.request", "body": b"some", "more_body": True})
        await communicator.send_input({"type": "http.disconnect"})
        assert await outputs(communicator, 0.5) in ([], UNANSWERED)
        await communicator.wait(5)
    assert events.of(rid) == {}
    assert finished == []
    assert len(opened) == 1 and opened[0].closed


class Slow:
    """A wrapper in front of Django that takes its time: the middleware reads the body ahead."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.02)
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    "learnt_from", ["request_started", "the end of its body", "the end of its body, read ahead"]
)
async def test_a_disconnect_before_djangos_listener_is_handed_to_it(
    events: Events, learnt_from: str
) -> None:
    # Django >= 5 starts listening for the disconnect only after request_started, whose sync
    # receivers run in a thread. Heard meanwhile, the disconnect must still reach Django's
    # listener rather than cancel Django from outside, which would orphan the view's task
    # and skip request_finished. The middleware learns that Django has begun from its own
    # receiver of request_started, or, before that, from Django's body reader having read the
    # whole body.
    from django.core.signals import request_started

    from asgi_disconnect import _django, is_disconnected

    application = wrapped("direct")  # connects the middleware's own receivers first
    if learnt_from.endswith("read ahead"):
        application = DisconnectMiddleware(Slow(get_asgi_application()))
    heard = threading.Event()

    entered = threading.Event()

    def hold_until_heard(sender: object, scope: Any = None, **kwargs: object) -> None:
        entered.set()
        for _ in range(500):  # in Django's thread: the event loop runs on meanwhile
            if is_disconnected(scope):
                heard.set()
                return
            time.sleep(0.01)

    if learnt_from.startswith("the end of its body"):
        # Django >= 5's: Django 4.2 never listens, and the middleware cancels it.
        request_started.disconnect(dispatch_uid=_django._started_listening)
    rid = new_id("django")
    before = asyncio.all_tasks()
    request_started.connect(hold_until_heard)
    try:
        with counting_request_finished() as finished:
            communicator = ApplicationCommunicator(application, scope("GET", "/held", rid))
            await communicator.send_input({"type": "http.request"})
            assert await asyncio.to_thread(entered.wait, 5)
            await communicator.send_input({"type": "http.disconnect"})
            assert await outputs(communicator) in ([], UNANSWERED)
            await communicator.wait(5)
            leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
            assert {task for task in leftover if not task.done()} == set()
    finally:
        request_started.disconnect(hold_until_heard)
        if django.VERSION >= (5, 0):
            request_started.connect(
                _django._started_listening, weak=False, dispatch_uid=_django._started_listening
            )
    assert heard.is_set()
    assert len(finished) == 1
    assert "finished" not in events.of(rid)


async def test_requests_django_serves_without_the_middleware_are_none_of_its_business(
    events: Events,
) -> None:
    wrapped("direct")  # the middleware's receivers are connected
    with counting_request_finished() as finished:
        communicator = ApplicationCommunicator(get_asgi_application(), scope("POST", "/"))
        await communicator.send_input({"type": "http.request", "body": b"some body"})
        assert (await communicator.receive_output(5))["status"] == 200
        assert (await communicator.receive_output(5))["body"] == b"Hello World!"
        await communicator.wait(5)
    assert len(finished) == 1


async def test_an_app_that_is_not_django_is_cancelled_as_any_other(events: Events) -> None:
    # In a process that serves Django: nothing of Django's is finished for it.
    rid = new_id("raw")

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        async with recorded(rid):
            await asyncio.sleep(30)

    with counting_request_finished() as finished:
        communicator = ApplicationCommunicator(DisconnectMiddleware(raw), scope("POST", "/"))
        await communicator.send_input({"type": "http.request", "body": b"some body"})
        await asyncio.to_thread(events.wait, rid, "started")
        await communicator.send_input({"type": "http.disconnect"})
        assert await outputs(communicator, 0.5) == UNANSWERED
        await communicator.wait(5)
    assert "cancelled" in events.of(rid)
    assert finished == []


def test_a_process_that_does_not_serve_django_is_left_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asgi_disconnect._django import attach

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        pass  # pragma: no cover

    monkeypatch.delitem(sys.modules, "django.core.handlers.asgi")
    assert attach(raw) is raw


def test_only_the_body_readers_of_frameworks_in_the_process_are_noted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.core.handlers.asgi import ASGIHandler

    from asgi_disconnect import _django, _quart

    readers: set[object] = set()
    monkeypatch.setattr(_django, "LISTENING_READERS", readers)
    monkeypatch.setattr(_quart, "LISTENING_READERS", readers)
    monkeypatch.delitem(sys.modules, "quart.asgi", raising=False)
    _django.note_readers()
    _quart.note_readers()
    assert readers == {ASGIHandler.read_body.__code__}
    monkeypatch.delitem(sys.modules, "django.core.handlers.asgi")
    readers.clear()
    _django.note_readers()
    _quart.note_readers()
    assert readers == set()


@pytest.mark.skipif(
    django.VERSION >= (5, 0),
    reason="Django >= 5 keeps an abandoned request in a reference cycle of its own (the "
    "traceback of its RequestAborted holds handle()'s frame), with or without the middleware",
)
async def test_an_abandoned_request_is_freed_without_the_garbage_collector(events: Events) -> None:
    # What the middleware does for Django < 5 holds nothing in a cycle.
    from served.djsite.views import HELD

    rid = new_id("django")
    client = SlowClient()
    application = wrapped("direct")
    gc.collect()
    gc.disable()
    try:
        served = asyncio.ensure_future(
            application(scope("POST", "/held", rid), client.receive, client.send)
        )
        await asyncio.to_thread(events.wait, rid, "started")
        client.left.set()
        await asyncio.wait_for(served, 5)
        state = weakref.ref(HELD.pop(rid).scope["asgi_disconnect"])  # type: ignore[attr-defined]
        del served
        assert state() is None
    finally:
        gc.enable()


class SlowClient:
    """The server's side of one request whose client takes 10 ms to read each part."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.bytes = 0
        self._asked = False

    async def receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b""}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        await asyncio.sleep(0.01)
        self.bytes += len(message.get("body", b""))
        if self.bytes > 1 << 20:
            self.left.set()  # a megabyte in, the client leaves


# Django warns that it iterates a FileResponse's file in a thread, with or without the middleware.
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
async def test_a_download_abandoned_mid_stream_closes_its_file_and_finishes_once() -> None:
    from served.djsite.views import SENT_FILES

    rid = new_id("django")
    client = SlowClient()
    with counting_request_finished() as finished:
        await asyncio.wait_for(
            wrapped("direct")(scope("GET", "/download", rid), client.receive, client.send), 20
        )
    assert client.bytes < 4 << 20  # cut short
    assert SENT_FILES.pop(rid).closed
    assert len(finished) == 1


async def test_django_imported_after_the_middleware_is_recognised_from_then_on(
    events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An app that imports Django on its first request: the middleware was built before.
    handlers = sys.modules["django.core.handlers.asgi"]
    monkeypatch.delitem(sys.modules, "django.core.handlers.asgi")
    application = DisconnectMiddleware(get_asgi_application())
    monkeypatch.setitem(sys.modules, "django.core.handlers.asgi", handlers)

    from served.djsite.views import HELD

    rid = new_id("django")
    with counting_request_finished() as finished:
        communicator = ApplicationCommunicator(application, scope("POST", "/held", rid))
        await communicator.send_input({"type": "http.request", "body": b"some body"})
        await asyncio.to_thread(events.wait, rid, "started")
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(5)
    assert len(finished) == 1
    assert HELD.pop(rid)._stream.closed


# -- deadlines ------------------------------------------------------------------------------

DEADLINE = 0.2


def timed(how: str) -> DisconnectMiddleware:
    middleware = wrapped(how)
    return DisconnectMiddleware(middleware.app, timeout=DEADLINE)


@pytest.mark.parametrize("how", ["direct", "channels", "passthrough"])
async def test_a_view_past_its_deadline_is_stopped_finished_once_and_answered_504(
    events: Events, how: str
) -> None:
    # Django >= 5 is told, as when its client leaves, and stops its view itself; Django 4.2
    # is cancelled, and the middleware finishes the request for it. Either way the 504 follows.
    from served.djsite.views import HELD

    rid = new_id("django")
    before = asyncio.all_tasks()
    with counting_request_finished() as finished:
        communicator = ApplicationCommunicator(timed(how), scope("POST", "/held", rid))
        await communicator.send_input({"type": "http.request", "body": b"some body"})
        start = await communicator.receive_output(5)
        body = await communicator.receive_output(5)
        await communicator.wait(5)
        leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
        assert {task for task in leftover if not task.done()} == set()
    assert (start["status"], body["body"]) == (504, b"Gateway Timeout\n")
    assert "cancelled" in events.of(rid)
    assert len(finished) == 1
    assert HELD.pop(rid)._stream.closed


async def test_a_sync_view_past_its_deadline_stops_at_its_next_check(events: Events) -> None:
    rid = new_id("django")
    with counting_request_finished() as finished:
        communicator = ApplicationCommunicator(timed("direct"), scope("GET", "/work-sync", rid))
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(5)
        await communicator.receive_output(5)
        await communicator.wait(5)
    assert start["status"] == 504
    assert "stopped" in events.of(rid)
    assert len(finished) == 1


async def test_a_stream_past_its_deadline_is_cut_and_finished_once(events: Events) -> None:
    rid = new_id("django")
    with counting_request_finished() as finished:
        communicator = ApplicationCommunicator(timed("direct"), scope("GET", "/stream", rid))
        await communicator.send_input({"type": "http.request", "body": b""})
        sent = await outputs(communicator)
        await communicator.wait(5)
    assert sent[0]["status"] == 200
    assert all(message.get("more_body") for message in sent[1:])  # never completed
    assert "cancelled" in events.of(rid)
    assert len(finished) == 1
