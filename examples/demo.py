"""What happens to a slow handler when its client leaves, without and with the middleware.

Starts uvicorn on 127.0.0.1 with one slow endpoint mounted twice: bare at /without, and
wrapped in DisconnectMiddleware at /with. For each, a client sends a request, leaves after
half a second, and the demo prints how long the handler went on working.

    python examples/demo.py
"""

from __future__ import annotations

import asyncio
import socket
import time

import uvicorn

from asgi_disconnect import DisconnectMiddleware, Receive, Scope, Send

WORK_SECONDS = 3.0
CLIENT_STAYS = 0.5

# path -> (started, stopped, how it stopped)
handler_runs: dict[str, tuple[float, float, str]] = {}
handler_stopped = asyncio.Event()


async def slow_handler(scope: Scope, receive: Receive, send: Send) -> None:
    """Works for WORK_SECONDS (think: a report, an LLM call), then answers."""
    started = time.perf_counter()
    outcome = "ran to its end"
    try:
        steps = 30
        for _ in range(steps):
            await asyncio.sleep(WORK_SECONDS / steps)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"report ready\n"})
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        handler_runs[scope["path"]] = (started, time.perf_counter(), outcome)
        handler_stopped.set()


wrapped = DisconnectMiddleware(slow_handler)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"] == "/with":
        await wrapped(scope, receive, send)
    else:
        await slow_handler(scope, receive, send)


async def impatient_client(port: int, path: str) -> float:
    """Sends a request, leaves after CLIENT_STAYS seconds; returns when it left."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: demo\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(CLIENT_STAYS)
    writer.close()
    await writer.wait_closed()
    return time.perf_counter()


async def wait_for_handler(path: str) -> tuple[float, float, str]:
    while path not in handler_runs:
        handler_stopped.clear()
        await asyncio.wait_for(handler_stopped.wait(), WORK_SECONDS + 5)
    return handler_runs[path]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn offers a flag, not an event
        if server.started:
            break
        await asyncio.sleep(0.01)

    print(
        f"uvicorn {uvicorn.__version__} on 127.0.0.1:{port}: a handler that works for "
        f"{WORK_SECONDS:.1f} s; a client that leaves after {CLIENT_STAYS:.1f} s\n"
    )
    print(f"{'':28}{'handler ran for':>26}   after the client left")
    for label, path in (
        ("without the middleware", "/without"),
        ("with DisconnectMiddleware", "/with"),
    ):
        left_at = await impatient_client(port, path)
        started, stopped, outcome = await wait_for_handler(path)
        ran = f"{stopped - started:.2f} s ({outcome})"
        after = stopped - left_at
        if outcome == "cancelled":
            tail = f"stopped {after * 1000:.1f} ms later"
        else:
            tail = f"worked {after:.2f} s more for nobody"
        print(f"{label:28}{ran:>26}   {tail}")

    server.should_exit = True
    await serving


if __name__ == "__main__":
    asyncio.run(main())
