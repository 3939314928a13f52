"""A raw ASGI app, served behind the middleware at ``/``, bare at ``/bare``, with a grace
period at ``/grace``, and with a deadline at ``/deadline``."""

from __future__ import annotations

import anyio

from asgi_disconnect import DisconnectMiddleware, wait_disconnected
from asgi_disconnect._types import Receive, Scope, Send

from ._common import AFTER, DEADLINE, FOREVER, GRACE, dispatch, record, recorded, request_id


async def read_body(receive: Receive) -> bytes | None:
    """The whole body, or None when the client left while sending it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, body: bytes, content_type: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"x-served-by", b"raw")],
        }
    )
    await send({"type": "http.response.body", "body": body[:5], "more_body": True})
    await send({"type": "http.response.body", "body": body[5:]})


async def handler(scope: Scope, receive: Receive, send: Send) -> None:
    rid = request_id(scope)
    route = scope["path"]
    if route == "/hello":
        body = await read_body(receive)
        if body is not None:
            await respond(send, b"hello " + body)
    elif route == "/work":
        await read_body(receive)
        async with recorded(rid):
            await anyio.sleep(FOREVER)
        await respond(send, b"done")
    elif route == "/upload":
        async with recorded(rid):
            body = await read_body(receive)
            if body is None:
                record(rid, "told")
                return
            record(rid, f"body:{len(body)}")
        await respond(send, b"got %d bytes" % len(body))
    elif route == "/stream":
        await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        async with recorded(rid):
            for i in range(int(FOREVER / 0.02)):
                await send(
                    {"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True}
                )
                await anyio.sleep(0.02)
        await send({"type": "http.response.body"})
    elif route == "/sized":
        # A response of a known length, cut short if the app stops mid-way.
        await read_body(receive)
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"1000")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async with recorded(rid):
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
            await anyio.sleep(FOREVER)
        await send({"type": "http.response.body", "body": b"x" * 990})
    elif route == "/after":
        await read_body(receive)
        await respond(send, b"responded")
        record(rid, "responded")
        await anyio.sleep(AFTER)
        record(rid, "after-done")
    elif route == "/polls":
        # What Starlette's Request.is_disconnected(), which takes only a message ready at
        # once, says after the response; with ?late, once the watcher waits in receive().
        from starlette.requests import Request

        await read_body(receive)
        if b"late" in scope["query_string"]:
            await anyio.sleep(0.02)
        await respond(send, b"responded")
        answers = [await Request(scope, receive).is_disconnected() for _ in range(3)]
        record(rid, "polled:" + "-".join(str(answer) for answer in answers))
    elif route == "/grace":
        await read_body(receive)
        record(rid, "started")
        await wait_disconnected(scope)
        record(rid, "told")
        # Clean-up that takes longer than the grace period it was given.
        try:
            await anyio.sleep(FOREVER)
        except anyio.get_cancelled_exc_class():
            record(rid, "cancelled")
            raise
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})


app = dispatch(
    {
        "": DisconnectMiddleware(handler),
        "/bare": handler,
        "/grace": DisconnectMiddleware(handler, grace_period=GRACE),
        "/deadline": DisconnectMiddleware(handler, timeout=DEADLINE),
    }
)
