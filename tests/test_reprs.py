"""What the middleware hands out prints no secrets of the request: a log line that formats it
shows neither its headers (cookies, ``Authorization``) nor its query string."""

from __future__ import annotations

import logging

import pytest
from apps import Record, slow_app
from communicator import communicate, http_scope

from asgi_disconnect import Cause, Disconnect, DisconnectMiddleware, Phase, Scope

pytestmark = pytest.mark.anyio

SECRETS = [b"Bearer s3cr3t-token", b"session=c00kie-value", b"api_key=qu3ry-secret"]


def secret_scope() -> Scope:
    return http_scope(
        method="GET",
        path="/reports/7",
        query_string=SECRETS[2],
        headers=[
            (b"host", b"testserver"),
            (b"authorization", SECRETS[0]),
            (b"cookie", SECRETS[1]),
        ],
    )


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        for part in secret.decode().split("="):
            if len(part) > 8:
                assert part not in text, text


async def test_the_repr_of_a_disconnect_names_the_request_without_its_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports: list[Disconnect] = []
    middleware = DisconnectMiddleware(slow_app(Record()), on_disconnect=reports.append)
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(middleware, secret_scope()) as c:
            await c.send_body(b"")
            await c.disconnect()
    (disconnect,) = reports
    # The scope itself still holds everything, for on_disconnect to read.
    assert (b"authorization", SECRETS[0]) in disconnect.scope["headers"]
    logged = logging.makeLogRecord({"msg": "stopped: %r", "args": (disconnect,)}).getMessage()
    for text in (repr(disconnect), str(disconnect), f"{disconnect}", logged[len("stopped: ") :]):
        assert_no_secret(text)
        assert text.startswith("Disconnect(method='GET', path='/reports/7', ")
        assert "phase=<Phase.WORKING: 'working'>" in text
        assert "cause=<Cause.CLIENT_LEFT: 'client_left'>" in text
    # Nor does anything the middleware logged about it.
    assert caplog.records
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert_no_secret(repr(vars(record)))


def test_the_repr_of_a_disconnect_without_method_or_path() -> None:
    disconnect = Disconnect({"type": "http"}, Phase.QUEUED, 0.0, Cause.DEADLINE)
    assert repr(disconnect) == (
        "Disconnect(method=None, path=None, phase=<Phase.QUEUED: 'queued'>, elapsed=0.0, "
        "cause=<Cause.DEADLINE: 'deadline'>)"
    )
