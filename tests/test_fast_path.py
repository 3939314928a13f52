"""What a request whose client stays pays for: as little as the guarantees allow.

While the client is there, the app awaits the server's own ``send()`` on a server that says
nothing through it when the client leaves (ASGI < 2.4), and the middleware only notes how far
the response has got.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import anyio
import pytest
from communicator import http_scope, serving

from asgi_disconnect import DisconnectMiddleware, _exchange
from asgi_disconnect._types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

START = {"type": "http.response.start", "status": 200, "headers": []}
CHUNK = {"type": "http.response.body", "body": b"a", "more_body": True}
LAST = {"type": "http.response.body", "body": b"b"}


class Server:
    """A server's receive() and send(), whose send() hands out awaitables it remembers."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.made: list[Awaitable[None]] = []
        self._requested = False

    async def receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    def send(self, message: Message) -> Awaitable[None]:
        made = self._send(message)
        self.made.append(made)
        return made

    async def _send(self, message: Message) -> None:
        self.sent.append(message)


async def serve(middleware: DisconnectMiddleware, scope: Scope, server: Server) -> None:
    """One request, in a task of its own, as servers run it, to its end."""
    done = anyio.Event()

    async def run() -> None:
        await middleware(scope, server.receive, server.send)
        done.set()

    async with serving(run):
        with anyio.fail_after(5):
            await done.wait()


@pytest.mark.parametrize(("spec_version", "direct"), [("2.3", True), ("2.4", False)])
async def test_before_asgi_2_4_the_app_awaits_the_servers_own_send(
    anyio_backend: object, spec_version: str, direct: bool
) -> None:
    server = Server()
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        for message in (START, CHUNK, LAST):
            sending = send(message)
            seen.append(sending is server.made[-1] if server.made else False)
            await sending
        assert scope["asgi_disconnect"].disconnected is False

    scope = http_scope(asgi={"version": "3.0", "spec_version": spec_version})
    middleware = DisconnectMiddleware(app)

    await serve(middleware, scope, server)
    # On ASGI 2.4 the middleware's own coroutine stands between, for the OSError it may raise.
    assert seen == [direct] * 3
    assert server.sent == [START, CHUNK, LAST]


async def test_work_after_a_response_sent_straight_to_the_server_outlives_the_deadline(
    anyio_backend: object,
) -> None:
    server = Server()
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send(START)
        await send(LAST)
        await anyio.sleep(0.3)  # past the deadline: work after the response
        outcome.append("ran to its end")

    middleware = DisconnectMiddleware(app, timeout=0.1)

    await serve(middleware, http_scope(), server)
    assert outcome == ["ran to its end"]
    assert server.sent == [START, LAST]


@pytest.mark.parametrize(
    ("asgi", "raises", "cached"),
    [
        ({"version": "3.0", "spec_version": "2.4"}, True, True),
        ({"version": "3.0", "spec_version": "2.3"}, False, True),
        ({"version": "3.0", "spec_version": "3"}, True, True),
        ({"version": "3.0", "spec_version": "two"}, False, True),  # taken for 2.0
        ({"version": "3.0", "spec_version": 2.4}, False, False),  # not a string: 2.0
        ({"version": "3.0", "spec_version": ["2", "4"]}, False, False),  # unhashable
        ({"version": "3.0"}, False, False),  # the spec's default
    ],
)
def test_what_a_servers_spec_version_says_of_its_send(
    monkeypatch: pytest.MonkeyPatch, asgi: dict[str, Any], raises: bool, cached: bool
) -> None:
    monkeypatch.setattr(_exchange, "_RAISES", {})
    scope = http_scope(asgi=asgi)
    assert _exchange._send_raises(scope) is raises
    assert list(_exchange._RAISES.values()) == ([raises] if cached else [])
    assert _exchange._send_raises(scope) is raises  # from the cache, or worked out again


def test_a_server_with_a_new_spelling_for_every_request_never_grows_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_exchange, "_RAISES", {})
    for minor in range(100):
        scope = http_scope(asgi={"version": "3.0", "spec_version": f"2.{minor}"})
        assert _exchange._send_raises(scope) is (minor >= 4)
    assert len(_exchange._RAISES) == 64
