"""What a request whose client stays pays for: as little as the guarantees allow.

While the client is there, the app awaits the server's own ``send()`` for each chunk of a
response that goes on, on a server that says nothing through it when the client leaves
(ASGI < 2.4). What starts or ends the response goes through the middleware's coroutine: it
counts once sent, not when its send is made.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import pytest
from backends import ASYNCIO
from communicator import http_scope, serving

from asgi_disconnect import DisconnectMiddleware, _exchange
from asgi_disconnect._types import ASGIApp, Message, Receive, Scope, Send

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


async def serve(middleware: ASGIApp, scope: Scope, server: Server) -> None:
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
    assert seen == [False, direct, False]
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


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_a_last_message_whose_send_never_runs_leaves_the_deadline_standing(
    anyio_backend: object, spec_version: str
) -> None:
    server = Server()
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send(START)
        never = send(LAST)
        assert isinstance(never, Coroutine)
        never.close()  # made, never awaited: the server never gets it
        try:
            await anyio.sleep(2)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("ran to its end")  # pragma: no cover (the defect this guards against)

    scope = http_scope(asgi={"version": "3.0", "spec_version": spec_version})
    await serve(DisconnectMiddleware(app, timeout=0.1), scope, server)
    assert outcome == ["cancelled"]
    assert LAST not in server.sent


class FailingServer(Server):
    """A server whose send() of the last message raises, as one whose socket broke."""

    async def _send(self, message: Message) -> None:
        if message is LAST:
            raise BrokenPipeError(32, "Broken pipe")
        await super()._send(message)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_a_last_message_the_server_fails_to_send_means_the_client_left(
    anyio_backend: object, spec_version: str
) -> None:
    # Not a response complete, after which the app would work on past its deadline: the
    # client left (ASGI 2.4 says so of an OSError; an older server's socket broke all the
    # same), and the app is stopped as for any client that leaves.
    server = FailingServer()
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send(START)
        try:
            await send(LAST)
        except OSError:  # pragma: no cover (the defect this guards against)
            outcome.append("OSError")
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        await anyio.sleep(2)  # pragma: no cover
        outcome.append("ran to its end")  # pragma: no cover

    scope = http_scope(asgi={"version": "3.0", "spec_version": spec_version})
    await serve(DisconnectMiddleware(app, timeout=1), scope, server)
    assert outcome == ["cancelled"]
    assert server.sent == [START]


@pytest.mark.parametrize("anyio_backend", ASYNCIO)
@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_a_wsgi_app_behind_asgirefs_adapter_is_served_as_it_is_bare(
    anyio_backend: object, spec_version: str
) -> None:
    # WsgiToAsgi hands the send it is given to async_to_sync(), which warns (an error here)
    # about a callable that is not a coroutine function.
    from asgiref.wsgi import WsgiToAsgi

    def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]

    class Coroutines(Server):  # as servers write send(): async def
        async def send(self, message: Message) -> None:
            await self._send(message)

    scope = http_scope(method="GET", asgi={"version": "3.0", "spec_version": spec_version})
    bare, wrapped = Coroutines(), Coroutines()
    app = WsgiToAsgi(hello)  # type: ignore[no-untyped-call]
    await serve(app, scope, bare)
    await serve(DisconnectMiddleware(app), scope, wrapped)
    assert wrapped.sent == bare.sent
    assert [message["type"] for message in bare.sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]


class Unanswerable:
    def __bool__(self) -> bool:
        raise RuntimeError("neither true nor false")


class Strange(str):
    """A message type that compares to an answer with no truth."""

    def __eq__(self, other: object) -> Any:
        return Unanswerable()

    __hash__ = str.__hash__


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_what_is_wrong_with_a_message_is_raised_where_its_send_is_awaited(
    anyio_backend: object, spec_version: str
) -> None:
    server = Server()
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "http.request"
        await send(START)
        sending = send({"type": Strange("http.response.body"), "more_body": True})
        try:
            await sending
        except RuntimeError as exc:
            raised.append(exc)
        await send(LAST)

    scope = http_scope(asgi={"version": "3.0", "spec_version": spec_version})
    await serve(DisconnectMiddleware(app), scope, server)
    assert [str(exc) for exc in raised] == ["neither true nor false"]
    assert server.sent == [START, LAST]
