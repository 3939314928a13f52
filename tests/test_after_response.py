"""Once the response is complete, nothing is cancelled: background work runs to its end."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from apps import Record, read_body, work_until_cancelled
from communicator import communicate, http_scope

from asgi_disconnect import DisconnectMiddleware, wait_disconnected
from asgi_disconnect._types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

START: Message = {"type": "http.response.start", "status": 200, "headers": []}
FINAL_BODY: list[Message] = [{"type": "http.response.body", "body": b"done"}]
PATHSEND: list[Message] = [{"type": "http.response.pathsend", "path": "/etc/hostname"}]
TRAILERS: list[Message] = [
    {"type": "http.response.body", "body": b"done"},
    {"type": "http.response.trailers", "headers": [], "more_trailers": False},
]


@pytest.mark.parametrize(
    ("start", "ending"),
    [(START, FINAL_BODY), (START, PATHSEND), ({**START, "trailers": True}, TRAILERS)],
    ids=["final-body", "pathsend", "trailers"],
)
async def test_work_after_the_response_runs_to_its_end(
    start: Message, ending: list[Message]
) -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await send(start)
        for message in ending:
            await send(message)
        record.started.set()
        await anyio.sleep(0.1)  # a background task
        record.events.append("background done")
        record.events.append((await receive())["type"])

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        for _ in range(1 + len(ending)):
            await c.receive_output()
        await c.disconnect()
        await c.wait()
    assert record.events == ["background done", "http.disconnect"]


async def test_with_trailers_the_final_body_does_not_complete_the_response() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await send({**START, "trailers": True})
        await send({"type": "http.response.body", "body": b"done"})
        await work_until_cancelled(record)  # computing the trailers

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await c.receive_output()
        await c.receive_output()
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled"]


async def test_starlette_background_tasks_survive_a_disconnect_after_the_response() -> None:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    done = anyio.Event()

    async def audit() -> None:
        await anyio.sleep(0.1)
        done.set()

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(audit))

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        assert (await c.receive_output())["status"] == 200
        assert (await c.receive_output())["body"] == b"ok"
        await c.disconnect()
        await c.wait()
    assert done.is_set()


async def test_trailers_sent_in_parts_complete_the_response_with_the_last() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await send({**START, "trailers": True})
        await send({"type": "http.response.body", "body": b"done"})
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": True})
        await work_until_cancelled(record)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        for _ in range(3):
            await c.receive_output()
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled"]


@pytest.mark.parametrize("client_left", [False, True], ids=["client-stays", "client-left"])
@pytest.mark.parametrize("watching", [False, True], ids=["ended-within-a-tick", "watcher-started"])
async def test_is_disconnected_after_the_response_sees_the_disconnect_at_once(
    watching: bool, client_left: bool
) -> None:
    # Starlette's Request.is_disconnected() takes only a message that is ready at once: it
    # calls receive() in a scope already cancelled. Once the response is complete the spec's
    # answer, http.disconnect, is ready, as servers have it (uvicorn, Starlette's TestClient),
    # whether or not the watcher waits in the server's receive(), and whether or not it has
    # heard the client leave.
    from starlette.requests import Request

    answers: list[bool] = []
    left = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        await request.body()
        if watching:
            await anyio.sleep(0.01)  # outlives the tick: the watcher waits in receive()
        assert not await request.is_disconnected()
        await send(START)
        await send(FINAL_BODY[0])
        if client_left:
            await left.wait()
            await anyio.sleep(0.01)  # the watcher has heard it
        for _ in range(3):
            answers.append(await Request(scope, receive).is_disconnected())

    async with communicate(DisconnectMiddleware(app), sticky=False) as c:
        await c.send_body(b"")
        await c.receive_output()
        await c.receive_output()
        if client_left:
            await c.disconnect()
            left.set()
        await c.wait()
    assert c.error is None
    assert answers == [True, True, True]


async def test_receive_after_the_response_still_hands_over_unread_body_first() -> None:
    # An app that answers before reading its whole body may read it afterwards.
    received: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(START)
        await send(FINAL_BODY[0])
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "http.disconnect":
                return

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"one", b"two")
        await c.wait()
    assert [message.get("body") for message in received] == [b"one", b"two", None]


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_an_app_that_answers_in_its_grace_period_is_not_cancelled_after(
    spec_version: str,
) -> None:
    # Told that the client left, the app answers within its grace period after all: what it
    # does after its response (Starlette's background tasks, in the same task) runs to its
    # end, past the end of the grace period. Before ASGI 2.4 what it sends now is dropped
    # (some servers hang on it), and the app's response is complete all the same.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await wait_disconnected(scope)
        await send(START)
        await send(FINAL_BODY[0])
        await work_until_cancelled(record, 1.5)  # past the grace period's end

    scope = http_scope(asgi={"version": "3.0", "spec_version": spec_version})
    async with communicate(DisconnectMiddleware(app, grace_period=1.0), scope) as c:
        await c.send_body(b"")
        await c.disconnect()
        await c.wait()
    assert record.events == ["finished"]
    assert c.error is None
    # The server got the app's answer, or (dropped) the middleware's 499 for a client gone.
    assert c.sent[0]["status"] == (200 if spec_version == "2.4" else 499)


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_a_499_from_a_middleware_inside_is_no_answer_of_the_apps(
    spec_version: str,
) -> None:
    # A router calls a sub-app behind a middleware of its own, with a scope of its own, then
    # works on: the inner middleware's 499 for the sub-app it cancelled is not the router's
    # answer, and the outer grace period still ends the router's work.
    record = Record()

    async def leaf(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, Record())
        await work_until_cancelled(Record())

    inner = DisconnectMiddleware(leaf)

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        await inner({k: v for k, v in scope.items() if k != "asgi_disconnect"}, receive, send)
        await work_until_cancelled(record)

    scope = http_scope(asgi={"version": "3.0", "spec_version": spec_version})
    async with communicate(DisconnectMiddleware(router, grace_period=0.2), scope) as c:
        await c.send_body(b"")
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled"]
    assert [m.get("status") for m in c.sent if m["type"] == "http.response.start"] == [499]


async def test_an_app_that_hears_its_client_leave_and_answers_anyway_runs_on() -> None:
    # It reads the disconnect itself after its body (told, never to be cancelled), answers
    # all the same, and works on after its response: nothing cancels that work.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        assert (await receive())["type"] == "http.disconnect"
        await send(START)
        await send(FINAL_BODY[0])
        await work_until_cancelled(record, 0.2)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await c.disconnect()
        await c.wait()
    assert record.events == ["finished"]
    assert c.error is None
