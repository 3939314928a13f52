"""The middleware under real servers, in front of raw ASGI, Starlette, FastAPI, Django,
Litestar, Quart and Falcon.

Each server is started as its users start it, on 127.0.0.1; clients are raw sockets, so that
they leave at an exact moment. The apps report what happened to them through a side channel
(``served/_common.py``); nothing here looks inside the middleware.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import django
import pytest
from served._common import AFTER, GRACE
from servers import (
    COMMANDS,
    H2_COMMANDS,
    LATENCIES,
    Events,
    H2Connection,
    Server,
    connection,
    fetch,
    http_request,
    new_id,
    read_until,
    without_date,
)

pytestmark = pytest.mark.servers

DJANGO_LISTENS = django.VERSION >= (5, 0)

APPS: dict[str, tuple[str, dict[str, str]]] = {
    "raw": ("served.raw_app:app", {}),
    # GZip and BaseHTTPMiddleware inside the middleware in one, outside it in the other.
    "starlette": (
        "served.starlette_app:app",
        {"SERVED_FRAMEWORK": "starlette", "SERVED_STACK": "inner"},
    ),
    "fastapi": (
        "served.starlette_app:app",
        {"SERVED_FRAMEWORK": "fastapi", "SERVED_STACK": "outer"},
    ),
    "django": ("served.djsite.asgi:application", {}),
    "litestar": ("served.litestar_app:app", {}),
    "quart": ("served.quart_app:app", {}),
    "falcon": ("served.falcon_app:app", {}),
}

#: Frameworks that run on asyncio only: not served by hypercorn's trio worker.
ASYNCIO_ONLY = {"django", "quart", "falcon"}

CASES = [
    (server, app)
    for server in COMMANDS
    for app in APPS
    if not (server == "hypercorn-trio" and app in ASYNCIO_ONLY)
]

#: Frameworks that listen for the disconnect and cancel their handler themselves, once they
#: hear it: the middleware hands it to them, with no grace period.
LISTENERS = {"quart", *(["django"] if DJANGO_LISTENS else [])}


H2_CASES = [
    (server, app)
    for server in H2_COMMANDS
    for app in APPS
    if not (server == "hypercorn-trio-h2" and app in ASYNCIO_ONLY)
]


@dataclass
class Served:
    server: Server
    app: str
    events: Events

    @property
    def port(self) -> int:
        return self.server.port

    def leave_when(self, request: bytes, rid: str, event: str = "started") -> float:
        """Send ``request``, close the connection once the app recorded ``event``."""
        with connection(self.port) as sock:
            sock.sendall(request)
            self.events.wait(rid, event)
            return time.monotonic()


def serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    name, app = request.param
    directory: Path = tmp_path_factory.mktemp(f"{name}-{app}")
    events = Events(directory / "events")
    target, env = APPS[app]
    env = {
        **env,
        "ASGI_DISCONNECT_EVENTS": str(events.path),
        "SERVED_SQLITE": str(directory / "db.sqlite3"),
    }
    server = Server(name, target, env, directory / "server.log")
    server.start()
    try:
        yield Served(server, app, events)
    finally:
        server.stop()


@pytest.fixture(scope="module", params=CASES, ids=[f"{s}-{a}" for s, a in CASES])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from serve(request, tmp_path_factory)


@pytest.fixture(scope="module", params=H2_CASES, ids=[f"{s}-{a}" for s, a in H2_CASES])
def served_h2(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    yield from serve(request, tmp_path_factory)


def test_a_handler_is_cancelled_when_its_client_leaves(served: Served) -> None:
    for _ in range(5):
        rid = new_id("a")
        closed = served.leave_when(http_request("POST", f"/work?id={rid}", b"small body"), rid)
        _, cancelled = served.events.wait(rid, "cancelled")
        assert "finished" not in served.events.of(rid)
        LATENCIES.setdefault(served.server.name, []).append(cancelled - closed)


def test_a_sync_handler_stops_at_its_next_check(served: Served) -> None:
    if served.app == "raw":
        pytest.skip("the raw app has no thread")
    rid = new_id("a-sync")
    served.leave_when(http_request("GET", f"/work-sync?id={rid}"), rid)
    served.events.wait(rid, "stopped")
    assert "finished" not in served.events.of(rid)


def test_b_a_client_leaving_mid_upload_never_hands_the_app_a_cut_body(served: Served) -> None:
    rid = new_id("b")
    request = http_request("POST", f"/upload?id={rid}", b"x" * 10_000, content_length=1_000_000)
    if served.app == "django" or served.server.name == "daphne":
        # The view (Django) or the whole app (daphne) starts only once the body is in.
        with connection(served.port) as sock:
            sock.sendall(request)
            time.sleep(0.2)
        time.sleep(0.5)  # nothing must happen: give it the time to go wrong
        assert served.events.of(rid) == {}
        return
    served.leave_when(request, rid)
    served.events.wait(rid, "cancelled", "stopped", "told")
    assert not [event for event in served.events.of(rid) if event.startswith("body:")]


def test_c_a_client_leaving_mid_stream_stops_the_stream(served: Served) -> None:
    rid = new_id("c")
    with connection(served.port) as sock:
        sock.sendall(http_request("GET", f"/stream?id={rid}"))
        read_until(sock, b"data: 0")
    served.events.wait(rid, "cancelled", "stopped")
    assert "finished" not in served.events.of(rid)


def test_d_work_after_a_complete_response_runs_to_its_end(served: Served) -> None:
    if served.app == "django":
        pytest.skip("Django has no work after the response")
    rid = new_id("d")
    response = fetch(served.port, http_request("GET", f"/after?id={rid}"))
    assert response.startswith(b"HTTP/1.1 200")
    _, done = served.events.wait(rid, "after-done", timeout=AFTER + 15)
    assert done - served.events.of(rid)["responded"] >= AFTER - 0.01
    assert "cancelled" not in served.events.of(rid)


@pytest.mark.parametrize("late", [False, True], ids=["ended-within-a-tick", "watcher-started"])
def test_d_after_the_response_http_disconnect_is_ready_at_once(served: Served, late: bool) -> None:
    # Starlette's Request.is_disconnected(), which takes only a message ready at once, asked
    # three times after the response, straight on receive() (no BaseHTTPMiddleware between,
    # which would answer for it). The spec's answer once the response is sent is
    # http.disconnect. Bare, servers differ: uvicorn has it ready every time, hypercorn and
    # daphne once, granian and gunicorn a step later. Behind the middleware it is ready every
    # time on every server, whether or not the watcher waits in the server's receive().
    if served.app != "raw":
        pytest.skip("the raw app asks the server itself")
    rid = new_id("d")
    query = "&late=1" if late else ""
    response = fetch(served.port, http_request("GET", f"/polls?id={rid}{query}"))
    assert response.startswith(b"HTTP/1.1 200")
    served.events.wait(rid, "polled:True-True-True")


@pytest.mark.parametrize(
    ("method", "body", "headers"),
    [
        ("GET", b"", ()),
        ("POST", b"world" * 3000, ()),
        ("POST", b"world", (("Accept-Encoding", "gzip"),)),
    ],
    ids=["get", "post-15k", "gzip"],
)
def test_e_a_client_that_stays_gets_the_bare_apps_bytes(
    served: Served, method: str, body: bytes, headers: tuple[tuple[str, str], ...]
) -> None:
    wrapped = fetch(served.port, http_request(method, "/hello", body, headers=headers))
    bare = fetch(served.port, http_request(method, "/bare/hello", body, headers=headers))
    assert wrapped.startswith(b"HTTP/1.1 200")
    assert without_date(wrapped) == without_date(bare)
    if headers and served.app in ("starlette", "fastapi"):
        assert b"content-encoding: gzip" in wrapped.lower()


def test_f_a_handler_that_keeps_going_is_cancelled_after_the_grace_period(served: Served) -> None:
    rid = new_id("f")
    closed = served.leave_when(http_request("GET", f"/grace/grace?id={rid}"), rid)
    _, cancelled = served.events.wait(rid, "cancelled", timeout=GRACE + 15)
    if served.app in LISTENERS:
        return  # the framework cancels its handler itself when it hears the disconnect
    told = served.events.of(rid)["told"]
    assert told >= closed
    assert cancelled - told >= GRACE - 0.01


def test_g_the_server_logged_no_error(served: Served) -> None:
    assert served.server.errors() == [], served.server.output()


@pytest.mark.parametrize(
    ("path", "leaves"),
    [("/hello", False), ("/work", True), ("/stream", True), ("/upload", True)],
    ids=["stays", "leaves-working", "leaves-mid-stream", "leaves-mid-upload"],
)
def test_h_quart_runs_its_hooks_as_it_does_alone(served: Served, path: str, leaves: bool) -> None:
    if served.app != "quart":
        pytest.skip("Quart's after_request and teardown_request functions")
    if path == "/upload" and served.server.name == "daphne":
        pytest.skip("daphne starts the app only once the whole body has arrived")
    seen: dict[str, set[str]] = {}
    for prefix in ("", "/bare"):
        rid = new_id("h")
        target = f"{prefix}{path}?id={rid}"
        if path == "/stream":
            request = http_request("GET", target)
        elif path == "/upload":
            request = http_request("POST", target, b"x" * 10_000, content_length=1_000_000)
        else:
            request = http_request("POST", target, b"hi")
        if leaves:
            served.leave_when(request, rid)
            served.events.wait(rid, "cancelled")
        else:
            assert fetch(served.port, request).startswith(b"HTTP/1.1 200")
        served.events.wait(rid, "teardown")
        seen[prefix] = set(served.events.of(rid))
    # Quart stopped its own handler, once, and ran the same hooks as without the middleware.
    assert seen[""] == seen["/bare"]
    assert "after_request" in seen[""] or leaves
    assert "finished" not in seen[""] or not leaves


def test_i_falcon_server_sent_events_stop_at_the_next_event(served: Served) -> None:
    if served.app != "falcon":
        pytest.skip("Falcon's resp.sse")
    closed: dict[str, float] = {}
    rids = {prefix: new_id("i") for prefix in ("", "/bare")}
    for prefix, rid in rids.items():
        closed[prefix] = served.leave_when(http_request("GET", f"{prefix}/sse?id={rid}"), rid)
    for prefix, rid in rids.items():
        # Falcon listens for the disconnect itself, and looks at what it heard only once the
        # next event is sent, two seconds on: the middleware leaves it to stop itself.
        _, stopped = served.events.wait(rid, "stopped", "cancelled")
        assert set(served.events.of(rid)) == {"started", "stopped"}
        assert stopped - closed[prefix] > 1.0


def test_j_quart_stops_its_own_handler_when_its_client_leaves_mid_upload(
    tmp_path: Path,
) -> None:
    # Quart reads the body in a receiver task that races its handler's task: cancelling the
    # task the server runs, where Quart waits for those two, would orphan both. The
    # middleware hands Quart's receiver the disconnect instead.
    events = Events(tmp_path / "events")
    env = {"ASGI_DISCONNECT_EVENTS": str(events.path)}
    server = Server("uvicorn-httptools", APPS["quart"][0], env, tmp_path / "server.log")
    server.start()
    try:
        rid = new_id("j")
        target = f"/upload?id={rid}"
        request = http_request("POST", target, b"x" * 10_000, content_length=1_000_000)
        with connection(server.port) as sock:
            sock.sendall(request)
            events.wait(rid, "started")
        events.wait(rid, "teardown", timeout=10)
        assert "cancelled" in events.of(rid)
    finally:
        server.stop()
    assert server.errors() == [], server.output()


# HTTP/2: one connection carries several requests, and a client abandons one of them with
# RST_STREAM(CANCEL) while the others go on. Every request ends with a DATA frame, even an
# empty one: uvicorn's HTTP/2 (0.54, zttp) never delivers a request whose HEADERS frame
# ended its stream, with or without the middleware.

HALF = b"y" * 10_000


def h2_neighbours(c: H2Connection, prefix: str) -> list[int]:
    """Two uploads, half sent: in flight until :func:`h2_finish` sends the rest."""
    return [
        c.request("POST", f"{prefix}/upload?id={new_id('n')}", HALF, end=False,
                  content_length=2 * len(HALF))
        for _ in range(2)
    ]  # fmt: skip


def h2_finish(c: H2Connection, streams: list[int]) -> list[bytes]:
    for stream in streams:
        c.send(stream, HALF)
    return [without_date(c.response(stream)) for stream in streams]


def test_h2_a_a_reset_stream_cancels_its_handler_and_no_other(served_h2: Served) -> None:
    served = served_h2
    with H2Connection.open(served.server) as bare:
        hello = bare.request("POST", "/bare/hello", b"x")
        expected = h2_finish(bare, h2_neighbours(bare, "/bare"))
        bare.response(hello)
    assert expected[0].startswith(b":status: 200")
    assert expected[0].endswith(b"got 20000 bytes")

    for _ in range(3):
        with H2Connection.open(served.server) as c:
            rid = new_id("h2a")
            reset = c.request("POST", f"/work?id={rid}", b"x")
            neighbours = h2_neighbours(c, "")
            served.events.wait(rid, "started")
            c.reset(reset)
            reset_at = time.monotonic()
            _, cancelled = served.events.wait(rid, "cancelled")
            LATENCIES.setdefault(f"{served.server.name} (reset)", []).append(cancelled - reset_at)
            assert h2_finish(c, neighbours) == expected
            assert "finished" not in served.events.of(rid)


def test_h2_b_closing_the_connection_cancels_every_handler(served_h2: Served) -> None:
    served = served_h2
    rids = [new_id("h2b") for _ in range(3)]
    with H2Connection.open(served.server, abrupt=True) as c:
        for rid in rids:
            c.request("POST", f"/work?id={rid}", b"x")
        for rid in rids:
            served.events.wait(rid, "started")
    closed = time.monotonic()
    for rid in rids:
        _, cancelled = served.events.wait(rid, "cancelled")
        LATENCIES.setdefault(f"{served.server.name} (close)", []).append(cancelled - closed)


def test_h2_c_work_after_a_complete_response_runs_to_its_end(served_h2: Served) -> None:
    served = served_h2
    if served.app == "django":
        pytest.skip("Django has no work after the response")
    rid = new_id("h2c")
    with H2Connection.open(served.server) as c:
        stream = c.request("GET", f"/after?id={rid}", end=False, flush=False)
        c.send(stream, b"")  # the one way that every server here reads a request's end
        assert c.response(stream).startswith(b":status: 200")
    _, done = served.events.wait(rid, "after-done", timeout=AFTER + 15)
    assert done - served.events.of(rid)["responded"] >= AFTER - 0.01
    assert "cancelled" not in served.events.of(rid)


def test_h2_d_the_server_logged_no_error(served_h2: Served) -> None:
    assert served_h2.server.errors() == [], served_h2.server.output()
