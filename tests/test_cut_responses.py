"""How a cut response is ended on each server: what the server tests see, in process."""

from __future__ import annotations

import contextvars
import functools
import logging

import pytest
from daphne.server import Server  # type: ignore[import-untyped]

from asgi_disconnect._servers import COMPLAINTS, end_cut_response


class Request:
    """Stands for twisted's request, which daphne's send() is bound to, and its channel."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.channel = self

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")


@pytest.mark.parametrize(
    ("http_version", "call"), [("1.1", "loseConnection"), ("2", "abortConnection")]
)
def test_daphne_is_told_to_close_the_connection_or_reset_the_stream(
    http_version: str, call: str
) -> None:
    request = Request()
    # As daphne makes it: partial(self.handle_reply, protocol).
    send = functools.partial(Server.__new__(Server).handle_reply, request)
    end_cut_response(send, http_version)
    assert request.calls == [call]


def test_a_send_bound_to_a_callable_of_no_module_is_not_taken_for_daphnes() -> None:
    # Callables of C extensions, and some made at run time, have __module__ None.
    def handle_reply(request: Request, message: object) -> None:
        raise AssertionError("not called")  # pragma: no cover

    handle_reply.__module__ = None  # type: ignore[assignment]
    request = Request()
    token = contextvars.copy_context()
    token.run(end_cut_response, functools.partial(handle_reply, request), "1.1")
    assert request.calls == []


@pytest.mark.parametrize("name", list(COMPLAINTS))
def test_the_servers_complaint_of_a_cut_response_is_dropped_once(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger(name)

    async def send(message: object) -> None:
        raise AssertionError  # pragma: no cover

    def serve_one(cut: bool) -> None:
        if cut:
            end_cut_response(send, "1.1")
        logger.error(COMPLAINTS[name])  # the app returned mid-response
        logger.error(COMPLAINTS[name])  # the same again: not the cut one's
        logger.error("something else")

    with caplog.at_level(logging.ERROR, logger=name):
        contextvars.copy_context().run(serve_one, True)
        assert [r.getMessage() for r in caplog.records] == [COMPLAINTS[name], "something else"]
        caplog.clear()
        # A request the middleware did not cut, in a context of its own, as servers run them.
        contextvars.copy_context().run(serve_one, False)
        assert len(caplog.records) == 3
