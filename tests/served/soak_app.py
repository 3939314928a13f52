"""The app under soak (``tests/soak.py``): four kinds of request, each response derived from
the request alone so that the client can check every byte of it.

- ``/upload``: answers with the body's length and SHA-256;
- ``/work?ms=``: works for ``ms`` milliseconds, then answers with a fixed text;
- ``/stream?n=&ms=``: streams ``n`` numbered events, ``ms`` milliseconds apart;
- ``/after``: answers at once, then works ``AFTER_MS`` for nobody (a background task);
- ``/ignore?ms=``: never reads its body, works for ``ms`` milliseconds, then answers.

``/bare/stats`` (outside the middleware) reports the number of tasks in the server's loop and
of the middleware's per-request objects still alive.
"""

from __future__ import annotations

import gc
import hashlib
import json
from urllib.parse import parse_qs

import anyio

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._exchange import Exchange
from asgi_disconnect._types import Receive, Scope, Send

from ._common import dispatch, record, recorded, request_id

AFTER_MS = 20


def work_answer(ms: int) -> bytes:
    return b"worked %d ms\n" % ms


def stream_part(i: int) -> bytes:
    return b"data: %d\n\n" % i


def upload_answer(body: bytes) -> bytes:
    return b"%d %s\n" % (len(body), hashlib.sha256(body).hexdigest().encode())


async def respond(send: Send, body: bytes, content_type: bytes = b"text/plain") -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def handler(scope: Scope, receive: Receive, send: Send) -> None:
    rid = request_id(scope)
    query = parse_qs(bytes(scope["query_string"]).decode())
    route = scope["path"]
    async with recorded(rid):
        if route == "/ignore":
            await anyio.sleep(int(query["ms"][0]) / 1000)
            await respond(send, b"ignored\n")
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if route == "/upload":
            await respond(send, upload_answer(b"".join(chunks)))
        elif route == "/work":
            ms = int(query["ms"][0])
            await anyio.sleep(ms / 1000)
            await respond(send, work_answer(ms))
        elif route == "/stream":
            n, ms = int(query["n"][0]), int(query["ms"][0])
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            for i in range(n):
                await send(
                    {"type": "http.response.body", "body": stream_part(i), "more_body": True}
                )
                await anyio.sleep(ms / 1000)
            await send({"type": "http.response.body", "body": b""})
        elif route == "/after":
            await respond(send, b"answered\n")
            record(rid, "responded")
            await anyio.sleep(AFTER_MS / 1000)
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})


def exchanges() -> int:
    return sum(isinstance(o, Exchange) for o in gc.get_objects())


async def stats(scope: Scope, receive: Receive, send: Send) -> None:
    counts = {
        # Not counting this request's own task.
        "tasks": len(anyio.get_running_tasks()) - 1,
        # The middleware's state for a request, still alive once every request has ended:
        # before a collection (cycles wait for it), and after.
        "exchanges_before_gc": exchanges(),
    }
    gc.collect()
    counts["exchanges"] = exchanges()
    await respond(send, json.dumps(counts).encode(), b"application/json")


app = dispatch({"": DisconnectMiddleware(handler), "/bare": stats})
