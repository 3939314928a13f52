"""Microseconds the middleware adds to one request, measured in one process.

The bare app and the wrapped app serve the same scripted requests in alternating rounds, and
the figure reported is the median over the rounds of (wrapped - bare), so that the machine's
drift hits both sides alike. Each request runs in a new task, as servers run them: a task
that holds no anyio state yet, which is what the middleware meets under a server.

Two floors can be measured the same way, for the figures to read against: ``passthrough``
(a middleware that only awaits the app) and ``copy_send`` (one that copies the scope and
wraps ``send`` in a coroutine, the least a middleware that watches a request does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import sniffio
from client import http_scope

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]

SCOPE: Scope = http_scope()
START: Message = {"type": "http.response.start", "status": 200, "headers": []}
HELLO: Message = {"type": "http.response.body", "body": b"Hello, world!"}
CHUNK = b"x" * 65536
UPLOAD = [{"type": "http.request", "body": CHUNK, "more_body": i < 15} for i in range(16)]
EMPTY = [{"type": "http.request", "body": b"", "more_body": False}]
PIECE: Message = {"type": "http.response.body", "body": b"data: token\n\n", "more_body": True}
END: Message = {"type": "http.response.body", "body": b""}


def make_apps(yield_once: Callable[[], Awaitable[None]]) -> dict[str, tuple[App, list[Message]]]:
    async def hello(scope: Scope, receive: Any, send: Any) -> None:
        await send(START)
        await send(HELLO)

    async def awaits_once(scope: Scope, receive: Any, send: Any) -> None:
        await yield_once()
        await send(START)
        await send(HELLO)

    async def upload(scope: Scope, receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send(START)
        await send({"type": "http.response.body", "body": str(size).encode()})

    async def stream(scope: Scope, receive: Any, send: Any) -> None:
        await send(START)
        for _ in range(100):
            await send(PIECE)
        await send(END)

    return {
        "a: answers at once": (hello, EMPTY),
        "b: awaits once": (awaits_once, EMPTY),
        "c: 1 MiB body in 64 KiB chunks": (upload, UPLOAD),
        "d: 100-chunk streaming response": (stream, EMPTY),
    }


class Server:
    """The server's side of one request: the body, then nothing until the client leaves."""

    __slots__ = ("_messages",)

    def __init__(self, messages: list[Message]) -> None:
        self._messages = iter(messages)

    async def receive(self) -> Message:
        for message in self._messages:
            return message
        # What a server's receive() costs while it waits: uvicorn awaits an asyncio.Event.
        if sniffio.current_async_library() == "trio":
            import trio

            await trio.sleep_forever()
        else:
            import asyncio

            await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")


async def discard(message: Message) -> None:
    pass


async def serve(app: App, body: list[Message], count: int) -> float:
    """Microseconds per request for `count` requests served one after another, each in a
    new task (with a fresh scope), as servers serve them."""
    if sniffio.current_async_library() == "trio":
        import trio

        started = time.perf_counter()
        for _ in range(count):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(app, dict(SCOPE), Server(body).receive, discard)
        return (time.perf_counter() - started) / count * 1e6
    import asyncio

    create_task = asyncio.get_running_loop().create_task
    started = time.perf_counter()
    for _ in range(count):
        await create_task(app(dict(SCOPE), Server(body).receive, discard))
    return (time.perf_counter() - started) / count * 1e6


def passthrough(app: App) -> App:
    async def middleware(scope: Scope, receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    return middleware


def copy_send(app: App) -> App:
    async def middleware(scope: Scope, receive: Any, send: Any) -> None:
        async def watched_send(message: Message) -> None:
            await send(message)

        await app({**scope, "watched": True}, receive, watched_send)

    return middleware


def wrap(middleware: str, app: App) -> App:
    if middleware == "passthrough":
        return passthrough(app)
    if middleware == "copy_send":
        return copy_send(app)
    if middleware == "asgi_disconnect":
        from asgi_disconnect import DisconnectMiddleware

        return DisconnectMiddleware(app)  # type: ignore[arg-type]
    if middleware == "asgi_disconnect_timeout":
        from asgi_disconnect import DisconnectMiddleware

        return DisconnectMiddleware(app, timeout=30.0)  # type: ignore[arg-type]
    if middleware == "fastapi_disconnect":
        from fastapi_disconnect import CancelOnDisconnectMiddleware  # type: ignore[import-not-found]

        return CancelOnDisconnectMiddleware(app)  # type: ignore[no-any-return]
    raise ValueError(f"unknown middleware {middleware!r}")


async def measure(middleware: str, loop: str, rounds: int, scale: float) -> list[dict[str, Any]]:
    if loop == "trio":
        import trio

        async def yield_once() -> None:
            await trio.lowlevel.checkpoint()
    else:
        import asyncio

        async def yield_once() -> None:
            await asyncio.sleep(0)

    rows = []
    for case, (app, body) in make_apps(yield_once).items():
        wrapped = wrap(middleware, app)
        count = max(1, int((2000 if body is EMPTY and "stream" not in case else 100) * scale))
        await serve(app, body, count)  # warm up both
        await serve(wrapped, body, count)
        bare_runs, wrapped_runs, added = [], [], []
        for index in range(rounds):
            # Alternate which goes first, so neither always runs on a warmer cache.
            if index % 2:
                w = await serve(wrapped, body, count)
                b = await serve(app, body, count)
            else:
                b = await serve(app, body, count)
                w = await serve(wrapped, body, count)
            bare_runs.append(b)
            wrapped_runs.append(w)
            added.append(w - b)
        rows.append(
            {
                "benchmark": "in-process",
                "middleware": middleware,
                "loop": loop,
                "case": case,
                "bare_us": statistics.median(bare_runs),
                "wrapped_us": statistics.median(wrapped_runs),
                "added_us": statistics.median(added),
            }
        )
    return rows


def run(middleware: str, loop: str, rounds: int, scale: float) -> list[dict[str, Any]]:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(measure(middleware, loop, rounds, scale))  # type: ignore[no-any-return]
    return anyio.run(measure, middleware, loop, rounds, scale, backend=loop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--middleware", default="asgi_disconnect")
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    for row in run(args.middleware, args.loop, args.rounds, args.scale):
        json.dump(row, sys.stdout)
        print()


if __name__ == "__main__":
    main()
