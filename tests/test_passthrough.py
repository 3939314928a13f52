"""What the middleware leaves alone, it leaves exactly as it was."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from communicator import communicate, http_scope

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import ASGIApp, Receive, Scope, Send

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
    spy, server = Spy(), Spy()  # server: what the server handed the middleware
    middleware = DisconnectMiddleware(spy, **options)

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        await server(scope, receive, send)
        await middleware(scope, receive, send)

    scope = http_scope(path=path)
    async with communicate(served, scope) as c:
        await c.wait()
    (seen_scope, receive, send) = spy.calls[0]
    assert ((seen_scope, receive, send) == server.calls[0] and seen_scope is scope) is excluded
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


async def test_wrapping_twice_with_the_same_options_behaves_like_wrapping_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spy = Spy()
    inner = DisconnectMiddleware(spy, timeout=5, exclude_paths=["/health"])
    outer = DisconnectMiddleware(inner, timeout=5.0, exclude_paths=("/health/",))
    assert outer.app is spy
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(outer) as c:
            await c.wait()
    scope, receive, _ = spy.calls[0]
    assert receive == scope["asgi_disconnect"].receive
    assert caplog.records == []


@pytest.mark.parametrize(
    ("inner", "outer", "words"),
    [
        ({"timeout": 5}, {"grace_period": 0.2}, "grace_period=0.0 inside, 0.2 outside"),
        ({"timeout": 5}, {"grace_period": 0.2}, "timeout=5.0 inside, None outside"),
        ({"exclude_paths": ["/health"]}, {}, "exclude_paths=('/health',) inside, () outside"),
        ({}, {"read_ahead": 0}, "read_ahead=65536 inside, 0 outside"),
    ],
)
def test_wrapping_twice_with_other_options_is_refused(
    inner: dict[str, Any], outer: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError, match=r"^app is a DisconnectMiddleware with other options") as e:
        DisconnectMiddleware(DisconnectMiddleware(Spy(), **inner), **outer)
    assert words in str(e.value)


def between(app: ASGIApp) -> ASGIApp:
    """A middleware of someone else's, between two DisconnectMiddlewares."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)

    return middleware


@pytest.mark.parametrize("options", [{}, {"timeout": 5, "grace_period": 1}])
async def test_one_inside_another_with_something_between_says_its_options_are_ignored(
    options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Not to be seen at construction: the outer one serves the requests, and the inner one,
    # if it was given options, says once that they do nothing.
    spy = Spy()
    outer = DisconnectMiddleware(between(DisconnectMiddleware(spy, **options)))
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        for _ in range(2):
            async with communicate(outer) as c:
                await c.wait()
    assert len(spy.calls) == 2
    assert all(scope["asgi_disconnect"].deadline is None for scope, _, _ in spy.calls)
    if not options:
        assert caplog.records == []
        return
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "timeout=5.0, grace_period=1.0" not in record.getMessage()  # in signature order
    assert "grace_period=1.0, timeout=5.0" in record.getMessage()
    assert "these options are ignored" in record.getMessage()
