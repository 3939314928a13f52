"""Bytes the middleware holds per open request: 10,000 long polls held at once.

Each request has sent its (empty) body and its app waits for an event that is set only once
all requests are open and older than the middleware's tick, so that every wrapped request has
its watcher. ``tracemalloc`` counts what is allocated beyond the bare app's figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from typing import Any

import anyio
from inprocess import EMPTY, HELLO, SCOPE, START, Server, discard, wrap


async def held(middleware: str | None, count: int) -> int:
    release = anyio.Event()
    started = 0
    all_started = anyio.Event()

    async def long_poll(scope: Any, receive: Any, send: Any) -> None:
        nonlocal started
        started += 1
        if started == count:
            all_started.set()
        await release.wait()
        await send(START)
        await send(HELLO)

    app = long_poll if middleware is None else wrap(middleware, long_poll)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    async with anyio.create_task_group() as tasks:
        for _ in range(count):
            tasks.start_soon(app, dict(SCOPE), Server(EMPTY).receive, discard)
        await all_started.wait()
        await anyio.sleep(0.05)  # every request is now older than the tick: watchers are up
        gc.collect()
        during = tracemalloc.get_traced_memory()[0]
        release.set()
    tracemalloc.stop()
    return during - before


def run(middleware: str, loop: str, count: int) -> dict[str, Any]:
    def measure(which: str | None) -> int:
        if loop == "uvloop":
            import uvloop

            return uvloop.run(held(which, count))  # type: ignore[no-any-return]
        return anyio.run(held, which, count, backend=loop)

    bare = measure(None)
    wrapped = measure(middleware)
    return {
        "benchmark": "memory",
        "middleware": middleware,
        "loop": loop,
        "requests": count,
        "bare_bytes_per_request": bare / count,
        "added_bytes_per_request": (wrapped - bare) / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--middleware", default="asgi_disconnect")
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "trio"], default="asyncio")
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    json.dump(run(args.middleware, args.loop, args.requests), sys.stdout)
    print()


if __name__ == "__main__":
    main()
