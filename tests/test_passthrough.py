"""What the middleware leaves alone, it leaves exactly as it was."""

from __future__ import annotations

import re
from typing import Any

import pytest
from communicator import communicate, http_scope

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = pytest.mark.anyio


class Spy:
    def __init__(self) -> None:
        self.calls: list[tuple[Scope, Receive, Send]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append((scope, receive, send))


async def _receive() -> Any:
    raise AssertionError("not called")  # pragma: no cover


async def _send(message: Any) -> None:
    raise AssertionError("not called")  # pragma: no cover


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
async def test_other_scopes_reach_the_app_untouched(kind: str) -> None:
    spy = Spy()
    scope = {"type": kind, "asgi": {"version": "3.0"}}
    await DisconnectMiddleware(spy)(scope, _receive, _send)
    assert spy.calls == [(scope, _receive, _send)]
    assert spy.calls[0][0] is scope


@pytest.mark.parametrize(
    ("path", "options", "excluded"),
    [
        ("/health", {"exclude_paths": ["/health"]}, True),
        ("/health/live", {"exclude_paths": ["/health/"]}, True),
        ("/healthz", {"exclude_paths": ["/health"]}, False),
        ("/anything", {"exclude_paths": ["/"]}, True),
        ("/stream", {"exclude": lambda scope: scope["path"] == "/stream"}, True),
        ("/other", {"exclude": lambda scope: scope["path"] == "/stream"}, False),
        ("/other", {"exclude_paths": ["/health"], "exclude": lambda s: False}, False),
    ],
)
async def test_excluded_requests_reach_the_app_untouched(
    path: str, options: dict[str, Any], excluded: bool
) -> None:
    spy = Spy()
    scope = http_scope(path=path)
    async with communicate(DisconnectMiddleware(spy, **options), scope) as c:
        await c.wait()
    (seen_scope, receive, send) = spy.calls[0]
    assert (seen_scope is scope and receive == c.receive and send == c.send) is excluded
    assert ("asgi_disconnect" in seen_scope) is not excluded


async def test_the_scope_is_copied_not_changed() -> None:
    spy = Spy()
    scope = http_scope()
    before = dict(scope)
    async with communicate(DisconnectMiddleware(spy), scope) as c:
        await c.wait()
    assert scope == before
    assert {k: v for k, v in spy.calls[0][0].items() if k != "asgi_disconnect"} == before


async def test_wrapping_twice_behaves_like_wrapping_once() -> None:
    spy = Spy()
    outer = DisconnectMiddleware(DisconnectMiddleware(spy))
    async with communicate(outer) as c:
        await c.wait()
    scope, receive, send = spy.calls[0]
    exchange = scope["asgi_disconnect"]
    assert receive == exchange.receive and send == exchange.send


def test_the_public_names_are_pinned() -> None:
    import asgi_disconnect

    assert asgi_disconnect.__all__ == [
        "Cause",
        "Disconnect",
        "DisconnectMiddleware",
        "Phase",
        "is_disconnected",
        "time_left",
        "wait_disconnected",
    ]
    assert re.fullmatch(r"\d+\.\d+\.\d+", asgi_disconnect.__version__)
