"""The middleware is the one reader of the server's receive, and reads ahead within bounds."""

from __future__ import annotations

import anyio
import pytest
from apps import Record, read_body, respond, slow_app, work_until_cancelled
from communicator import communicate, http_scope

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("wait_first", [False, True], ids=["reads-at-once", "waits-then-reads"])
async def test_the_app_gets_the_body_messages_in_order_and_unchanged(wait_first: bool) -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if wait_first:
            await anyio.sleep(0.05)  # the watcher reads ahead meanwhile
        await read_body(receive, record)
        await respond(send)

    chunks = [{"type": "http.request", "body": b"%d" % i, "more_body": i < 4} for i in range(5)]
    chunks[2]["extension"] = "kept"
    async with communicate(DisconnectMiddleware(app)) as c:
        for chunk in chunks:
            await c.send_input(chunk)
        await c.wait()
    assert record.received == chunks
    assert all(got is sent for got, sent in zip(record.received, chunks, strict=True))


async def test_a_small_body_the_app_never_reads_does_not_hide_the_disconnect() -> None:
    record = Record()
    async with communicate(DisconnectMiddleware(slow_app(record, read=False))) as c:
        await c.send_body(b"a", b"b", b"c")
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled"]


@pytest.mark.parametrize("read_ahead", [0, 100, 250])
async def test_read_ahead_stops_at_its_bound(read_ahead: int) -> None:
    record = Record()
    reads_while_idle: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(0.1)
        reads_while_idle.append(c.reads)
        await read_body(receive, record)
        await respond(send)

    async with communicate(DisconnectMiddleware(app, read_ahead=read_ahead)) as c:
        await c.send_body(*[b"x" * 60] * 8)
        await c.wait()
    # Reading stops once read_ahead bytes are held: at most one message past the bound.
    assert reads_while_idle == [-(-read_ahead // 60)]
    assert b"".join(m["body"] for m in record.received) == b"x" * 480


async def test_the_buffer_holds_a_bounded_number_of_messages() -> None:
    record = Record()
    reads_while_idle: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(0.1)
        reads_while_idle.append(c.reads)
        await read_body(receive, record)
        await respond(send)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(*[b""] * 300)
        await c.wait()
    assert reads_while_idle == [128]
    assert len(record.received) == 300


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue"])
async def test_nothing_is_read_before_an_app_that_was_asked_to_continue_reads(
    value: bytes,
) -> None:
    record = Record()
    reads_before_asking: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(0.05)
        reads_before_asking.append(c.reads)
        await read_body(receive, record)
        await respond(send)

    scope = http_scope(headers=[(b"host", b"x"), (b"expect", value)])
    async with communicate(DisconnectMiddleware(app), scope) as c:
        await c.send_body(b"a", b"b")
        await c.wait()
    assert reads_before_asking == [0]
    assert [m["body"] for m in record.received] == [b"a", b"b"]


@pytest.mark.parametrize("grace", [0, 0.05], ids=["no-grace", "grace"])
async def test_a_client_leaving_mid_upload_cancels_the_app(grace: float) -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, record)
            record.events.append(f"body {body!r}")
            await work_until_cancelled(record)
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled")
            raise

    async with communicate(DisconnectMiddleware(app, grace_period=grace)) as c:
        await c.send_input({"type": "http.request", "body": b"part", "more_body": True})
        await anyio.sleep(0.02)
        await c.disconnect()
        await c.wait()
    # A cut body is never handed over marked complete.
    assert not any(m.get("more_body") is False for m in record.received)
    assert record.events[-1] == "cancelled"
    # Without a grace period the app is cancelled where it waits for its body; with one, it
    # is told first.
    told = record.received[-1] == {"type": "http.disconnect"}
    assert told == bool(grace)


async def test_body_read_ahead_is_delivered_before_the_disconnect() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(0.05)
        await read_body(receive, record)

    async with communicate(DisconnectMiddleware(app, grace_period=5)) as c:
        await c.send_input({"type": "http.request", "body": b"a", "more_body": True})
        await c.send_input({"type": "http.request", "body": b"b", "more_body": True})
        await c.disconnect()
        await c.wait()
    assert [m["type"] for m in record.received] == ["http.request"] * 2 + ["http.disconnect"]


async def test_an_app_that_read_part_of_the_body_still_hears_the_client_leave() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        record.received.append(await receive())
        record.started.set()
        await work_until_cancelled(record)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_input({"type": "http.request", "body": b"head", "more_body": True})
        await record.started.wait()
        await c.send_body(b"rest", b"")
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled"]
    assert c.reads == 4


async def test_an_app_listening_right_after_its_body_starts_the_watcher_itself() -> None:
    # uvicorn returns a body that has arrived without yielding, so the app can reach its
    # listening receive() before it has ever waited.
    queued: list[dict[str, object]] = [{"type": "http.request", "body": b"", "more_body": False}]
    gone = anyio.Event()
    heard: list[str] = []

    async def server_receive() -> object:
        if queued:
            return queued.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        heard.append((await receive())["type"])

    async with communicate(DisconnectMiddleware(app), receive=server_receive) as c:
        await anyio.sleep(0.02)
        gone.set()
        await c.wait()
    assert heard == ["http.disconnect"]
    assert c.returned
