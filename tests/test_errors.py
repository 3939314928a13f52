"""Errors reach whoever should see them, unchanged; bad input gets a clear error."""

from __future__ import annotations

import logging
import math
import sys
from datetime import timedelta
from typing import Any

import anyio
import pytest
from apps import Record, read_body, respond, slow_app
from communicator import communicate, http_scope

from asgi_disconnect import DisconnectMiddleware, is_disconnected, wait_disconnected
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = pytest.mark.anyio

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]


class AppError(Exception):
    pass


@pytest.mark.parametrize("wait_first", [False, True], ids=["at-once", "after-waiting"])
async def test_the_apps_exception_reaches_the_server_unchanged(wait_first: bool) -> None:
    error = AppError("boom")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if wait_first:
            await anyio.sleep(0.01)
        raise error

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.error is error


@pytest.mark.parametrize("then", ["raises", "returns"])
async def test_an_app_that_stops_on_the_disconnect_it_read_keeps_its_outcome(then: str) -> None:
    # Told of the disconnect (a grace period), the app stops without awaiting again: the
    # cancellation due later must not land in the middleware's clean-up instead.
    error = AppError("client left")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if then == "raises":
            raise error

    async with communicate(DisconnectMiddleware(app, grace_period=5)) as c:
        await c.send_input({"type": "http.request", "body": b"x", "more_body": True})
        await c.disconnect()
        await c.wait()
    if then == "raises":
        assert c.error is error
    else:
        assert c.error is None and c.returned


@pytest.mark.parametrize("watcher", [False, True], ids=["app-reads", "watcher-reads"])
async def test_without_grace_an_app_reading_its_body_is_cancelled_in_receive(
    watcher: bool,
) -> None:
    # Not handed the disconnect: Starlette's request.stream() would raise ClientDisconnect.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if watcher:
            await anyio.sleep(0.01)  # long enough for the watcher to read ahead
        try:
            record.received.append(await receive())
            record.received.append(await receive())
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled")
            raise
        raise AppError("saw the disconnect")

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_input({"type": "http.request", "body": b"x", "more_body": True})
        await anyio.sleep(0.05)  # the app waits for the rest of its body
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled"]
    assert [message["type"] for message in record.received] == ["http.request"]
    assert c.error is None and c.returned


async def test_an_exception_group_the_app_raises_stays_as_it_is() -> None:
    group = ExceptionGroup("app's own", [AppError("a"), AppError("b")])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(0.01)
        raise group

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.wait()
    assert c.error is group


class ServerError(Exception):
    pass


@pytest.mark.parametrize("after_body", [False, True], ids=["while-app-reads", "while-watching"])
async def test_an_error_from_the_servers_receive_reaches_the_apps_receive(
    after_body: bool,
) -> None:
    error = ServerError("receive broke")
    seen: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if after_body:
            assert (await receive())["type"] == "http.request"
        try:
            await receive()
        except ServerError as exc:
            seen.append(exc)
        try:
            await receive()  # and again: never a hang
        except ServerError as exc:
            seen.append(exc)
        await respond(send)

    async with communicate(DisconnectMiddleware(app)) as c:
        if after_body:
            await c.send_body(b"")
        await c.send_input(error)
        await c.wait()
    assert seen == [error, error]


async def test_a_server_error_the_app_never_reads_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await anyio.sleep(0.05)
        await respond(send)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await c.send_input(ServerError("lost"))
        await c.wait()
    assert c.returned
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], ServerError)


@pytest.mark.parametrize("malformed", [None, "http.request", ["type"], {"body": b""}], ids=repr)
@pytest.mark.parametrize("after_body", [False, True], ids=["while-app-reads", "while-watching"])
async def test_a_malformed_message_from_the_server_is_a_clear_type_error(
    malformed: Any, after_body: bool
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if after_body:
            await receive()
            await anyio.sleep(0.01)
        await receive()

    async with communicate(DisconnectMiddleware(app)) as c:
        if after_body:
            await c.send_body(b"")
        await c.send_input(malformed)
        await c.wait()
    assert isinstance(c.error, TypeError)
    assert "not an ASGI message" in str(c.error)
    assert repr(malformed) in str(c.error)


async def test_unknown_message_types_pass_through_untouched() -> None:
    seen: list[Any] = []
    odd_in = {"type": "http.future_extension", "data": 1}
    odd_out = {"type": "http.response.future_extension", "data": 2}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        await anyio.sleep(0.05)
        seen.append(await receive())
        await send(odd_out)
        await respond(send)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await c.send_input(odd_in)
        await c.wait()
    assert seen[1] is odd_in
    assert c.sent[0] is odd_out


async def test_a_malformed_message_from_the_app_is_left_to_the_server() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(None)  # type: ignore[arg-type]

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.wait()
    assert c.sent == [None]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"grace_period": "1"}, "grace_period"),
        ({"grace_period": None}, "grace_period"),
        ({"grace_period": timedelta(seconds=1)}, "grace_period"),
        ({"grace_period": True}, "grace_period"),
        ({"read_ahead": 1.5}, "read_ahead"),
        ({"read_ahead": "64k"}, "read_ahead"),
        ({"read_ahead": None}, "read_ahead"),
        ({"read_ahead": False}, "read_ahead"),
        ({"on_disconnect": "log"}, "on_disconnect"),
        ({"exclude": ["/health"]}, "exclude"),
        ({"exclude_paths": None}, "exclude_paths"),
        ({"exclude_paths": "/health"}, "exclude_paths"),
        ({"exclude_paths": b"/health"}, "exclude_paths"),
        ({"exclude_paths": 1}, "exclude_paths"),
        ({"exclude_paths": [b"/health"]}, "exclude_paths"),
        ({"exclude_paths": [None]}, "exclude_paths"),
        ({"timeout": "30"}, "timeout"),
        ({"timeout": timedelta(seconds=30)}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout_header": b"x-envoy-expected-rq-timeout-ms"}, "timeout_header"),
        ({"timeout": 5, "request_start_header": 1}, "request_start_header"),
        ({"clock_skew": "1"}, "clock_skew"),
        ({"clock_skew": None}, "clock_skew"),
        ({"clock_skew": False}, "clock_skew"),
    ],
    ids=repr,
)
def test_an_option_of_the_wrong_type_raises_type_error_naming_it(
    options: dict[str, Any], name: str
) -> None:
    with pytest.raises(TypeError, match=f"^{name} "):
        DisconnectMiddleware(slow_app(Record()), **options)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"grace_period": -1}, "grace_period"),
        ({"grace_period": math.inf}, "grace_period"),
        ({"grace_period": math.nan}, "grace_period"),
        ({"read_ahead": -1}, "read_ahead"),
        ({"exclude_paths": ["health"]}, "exclude_paths"),
        ({"exclude_paths": ["/health", ""]}, "exclude_paths"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout_header": "x envoy"}, "timeout_header"),
        ({"timeout": 5, "request_start_header": ""}, "request_start_header"),
        ({"clock_skew": -0.1}, "clock_skew"),
        ({"clock_skew": math.inf}, "clock_skew"),
        # Without a deadline, the time a request queued would count against nothing.
        ({"request_start_header": "x-request-start"}, "request_start_header"),
        ({"request_start_header": "x-request-start", "clock_skew": 2.0}, "request_start_header"),
    ],
    ids=repr,
)
def test_an_option_of_the_wrong_value_raises_value_error_naming_it(
    options: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        DisconnectMiddleware(slow_app(Record()), **options)


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 30, "request_start_header": "x-request-start"},
        {"timeout": lambda scope: None, "request_start_header": "x-request-start"},
        {"timeout_header": "x-envoy-expected-rq-timeout-ms", "request_start_header": "x-start"},
        {"grace_period": 0, "read_ahead": 0, "exclude_paths": ["/health"], "clock_skew": 0},
        {"exclude_paths": iter(["/health"]), "timeout": 1},
    ],
    ids=repr,
)
def test_valid_options_are_taken(options: dict[str, Any]) -> None:
    DisconnectMiddleware(slow_app(Record()), **options)


def test_an_app_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^app must be an ASGI application"):
        DisconnectMiddleware("myproject.asgi:application")  # type: ignore[arg-type]


@pytest.mark.parametrize("scope", [http_scope(), {"asgi_disconnect": "forged"}, None])
async def test_asking_about_a_scope_the_middleware_did_not_see_is_a_clear_error(
    scope: Any,
) -> None:
    with pytest.raises(ValueError, match=r"asgi_disconnect|DisconnectMiddleware"):
        is_disconnected(scope)
    with pytest.raises(ValueError, match=r"asgi_disconnect|DisconnectMiddleware"):
        await wait_disconnected(scope)


@pytest.mark.parametrize("scope", [None, {}, "http", {"path": "/"}], ids=repr)
async def test_a_scope_that_is_not_an_asgi_scope_is_a_clear_type_error(scope: Any) -> None:
    async def receive() -> Any:
        raise AssertionError("not called")  # pragma: no cover

    async def send(message: Any) -> None:
        raise AssertionError("not called")  # pragma: no cover

    with pytest.raises(TypeError, match=r"not an ASGI scope") as caught:
        await DisconnectMiddleware(slow_app(Record()))(scope, receive, send)
    assert repr(scope) in str(caught.value)


@pytest.mark.parametrize("read_ahead", [True, False], ids=["read-ahead", "read-by-the-app"])
@pytest.mark.parametrize("body", [None, 12345, "text"], ids=repr)
async def test_a_body_that_is_not_bytes_is_a_clear_type_error(body: Any, read_ahead: bool) -> None:
    # Whoever reads it: the watcher ahead of the app, or the app straight from the server.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if read_ahead:
            await anyio.sleep(0.02)  # the middleware reads ahead of the app meanwhile
        await receive()

    async with communicate(DisconnectMiddleware(app)) as c:
        if not read_ahead:
            await anyio.sleep(0.02)  # the app waits in receive(), alone
        await c.send_input({"type": "http.request", "body": body, "more_body": True})
        await c.wait()
    assert isinstance(c.error, TypeError)
    assert "body is not bytes" in str(c.error)
    assert repr(body) in str(c.error)


async def test_an_error_from_the_servers_send_reaches_the_app_and_the_server_unchanged() -> None:
    error = RuntimeError("the server refuses this message")
    seen: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        try:
            await respond(send)
        except RuntimeError as exc:
            seen.append(exc)
            raise

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        raise error

    with anyio.fail_after(5), pytest.raises(RuntimeError) as caught:
        await DisconnectMiddleware(app)(http_scope(), receive, send)
    assert seen == [error]
    assert caught.value is error
