"""Deadlines under real servers: a 504 in time, a stream seen cut, work after the response kept.

The raw app of ``served/raw_app.py`` is served under ``/deadline`` with a deadline of
``DEADLINE`` seconds. Clients are raw sockets that keep their connection alive, so that a
server which left a cut response's connection open would be seen hanging.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from served._common import AFTER, DEADLINE
from servers import COMMANDS, H2_COMMANDS, HOST, Events, H2Connection, Server, new_id

pytestmark = pytest.mark.servers

#: Seconds from a request's deadline to its client having the whole 504, by server.
LATENCIES: dict[str, list[float]] = {}


def serve(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Events]]:
    directory: Path = tmp_path_factory.mktemp(f"deadline-{name}")
    events = Events(directory / "events")
    server = Server(
        name,
        "served.raw_app:app",
        {"ASGI_DISCONNECT_EVENTS": str(events.path)},
        directory / "server.log",
    )
    server.start()
    try:
        yield server, events
        # Whatever happened above, nothing of it is an error to the server.
        time.sleep(0.2)
        assert server.errors() == []
    finally:
        server.stop()


@pytest.fixture(scope="module", params=list(COMMANDS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Events]]:
    yield from serve(request.param, tmp_path_factory)


def exchange(port: int, target: str, timeout: float = 15.0) -> tuple[bytes, float, bool]:
    """GET ``target`` on a kept-alive connection; read until the server closes it or, for a
    complete response, until it is complete. Returns what came, when the client sent the
    request, and whether the server closed the connection."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sent = time.monotonic()
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        received = b""
        while not _complete(received):
            chunk = sock.recv(65536)
            if not chunk:
                return received, sent, True
            received += chunk
        return received, sent, False


def _complete(response: bytes) -> bool:
    head, found, body = response.partition(b"\r\n\r\n")
    if not found:
        return False
    headers = head.lower()
    if b"transfer-encoding: chunked" in headers:
        return body.endswith(b"0\r\n\r\n")
    for line in headers.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def test_a_slow_handler_gets_a_504_soon_after_its_deadline(server: tuple[Server, Events]) -> None:
    served, events = server
    for _ in range(5):
        rid = new_id("deadline")
        response, sent, _ = exchange(served.port, f"/deadline/work?id={rid}")
        answered = time.monotonic()
        assert response.startswith(b"HTTP/1.1 504 ")
        assert response.endswith(b"\r\n\r\nGateway Timeout\n")
        events.wait(rid, "cancelled")
        assert "finished" not in events.of(rid)
        assert answered - sent >= DEADLINE
        LATENCIES.setdefault(served.name, []).append(answered - sent - DEADLINE)
        # Generous: the figures are printed at the end of the run; this catches a hang.
        assert answered - sent < DEADLINE + 5


@pytest.mark.parametrize("route", ["stream", "sized"])
def test_a_response_streaming_at_its_deadline_is_seen_cut(
    server: tuple[Server, Events], route: str
) -> None:
    served, events = server
    rid = new_id("deadline")
    response, _, closed = exchange(served.port, f"/deadline/{route}?id={rid}")
    assert response.startswith(b"HTTP/1.1 200 ")
    assert closed, "the server left the connection of a cut response open"
    assert not _complete(response), response
    events.wait(rid, "cancelled")


def test_work_after_the_response_outlives_the_deadline(server: tuple[Server, Events]) -> None:
    served, events = server
    rid = new_id("deadline")
    response, _, _ = exchange(served.port, f"/deadline/after?id={rid}")
    assert response.startswith(b"HTTP/1.1 200 ") and _complete(response)
    _, done = events.wait(rid, "after-done", timeout=AFTER + 15)
    assert done - events.of(rid)["responded"] >= AFTER - 0.01
    assert "cancelled" not in events.of(rid)


@pytest.fixture(scope="module", params=list(H2_COMMANDS))
def h2_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Events]]:
    yield from serve(request.param, tmp_path_factory)


@pytest.mark.parametrize("route", ["stream", "sized"])
def test_over_http2_a_response_streaming_at_its_deadline_is_reset(
    h2_server: tuple[Server, Events], route: str
) -> None:
    served, events = h2_server
    if served.name.startswith("hypercorn"):
        pytest.skip(
            "hypercorn leaves the stream of an app that returned mid-response open, "
            "with or without the middleware"
        )
    rid = new_id("deadline-h2")
    with H2Connection.open(served) as connection:
        stream = connection.request("GET", f"/deadline/{route}?id={rid}", end=False, flush=False)
        connection.send(stream, b"")  # uvicorn's zttp wants the request ended by a DATA frame
        with pytest.raises(AssertionError, match="reset stream"):
            connection.response(stream)
        assert connection.heads[stream][0] == (b":status", b"200")
    events.wait(rid, "cancelled")
