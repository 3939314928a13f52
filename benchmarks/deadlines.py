"""Deadlines: this middleware against the usual ways, on the same endpoints; the 504's latency.

Each way gives requests a budget of one second, on a Starlette app with four endpoints: a
slow handler (5 s), a stream (30 events over 3 s), work after the response (2 s, a
background task) and a handler that blocks its event loop (5 s):

- ``asgi_disconnect``: ``DisconnectMiddleware(app, timeout=1)``, under uvicorn;
- ``wait_for``: an ASGI middleware running the app under ``asyncio.wait_for()``, under uvicorn;
- ``wait_for_call_next``: FastAPI's usual ``@app.middleware("http")`` recipe, under uvicorn;
- ``gunicorn --timeout 1``: the bare app under gunicorn's ASGI worker.

Then the latency from a request's deadline to its client having the whole 504, over
``--requests`` requests sent ``--concurrency`` at a time, under uvicorn.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent
ERROR = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\[error\]|Exception in ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(way: str, events: Path, log: Path) -> Iterator[int]:
    port = free_port()
    if way == "gunicorn --timeout 1":
        command = ["gunicorn", "-k", "asgi", "--timeout", "1", "--workers", "1"]
        command += ["--bind", f"127.0.0.1:{port}", "--chdir", str(HERE), "deadline_apps:app"]
        env_way = "bare"
    else:
        command = ["uvicorn", "deadline_apps:app", "--app-dir", str(HERE), "--port", str(port)]
        command += ["--http", "httptools", "--no-access-log"]
        env_way = way
    env = {"DEADLINE_WAY": env_way, "DEADLINE_EVENTS": str(events), "PATH": sys.path[0]}
    import os

    env = {**os.environ, **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *command], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        stop_by = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > stop_by or process.poll() is not None:
                    raise RuntimeError(log.read_text()) from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)


def get(port: int, target: str, timeout: float = 10.0) -> tuple[bytes, float, str]:
    """What came back, after how long, and how it ended: complete, closed or timed out."""
    sent = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        try:
            while not complete(received):
                chunk = sock.recv(65536)
                if not chunk:
                    return received, time.monotonic() - sent, "closed"
                received += chunk
        except TimeoutError:
            return received, time.monotonic() - sent, "timed out"
        except ConnectionResetError:
            return received, time.monotonic() - sent, "reset"
    return received, time.monotonic() - sent, "complete"


def complete(response: bytes) -> bool:
    head, found, body = response.partition(b"\r\n\r\n")
    if not found:
        return False
    if b"transfer-encoding: chunked" in head.lower():
        return body.endswith(b"0\r\n\r\n")
    match = re.search(rb"content-length: (\d+)", head.lower())
    return match is not None and len(body) >= int(match[1])


def describe(response: bytes, took: float, ending: str) -> str:
    status = response[9:12].decode() if response.startswith(b"HTTP/1.1") else "none"
    events = response.count(b"data: ")
    what = f"{status}" + (f", {events} events" if events else "")
    if ending == "complete":
        return f"{what}, complete, {took:.2f} s"
    return f"{what}, {ending} without completing, {took:.2f} s"


def compare(ways: list[str]) -> None:
    columns = ["slow (5 s)", "stream (3 s)", "work after the response (2 s)", "blocked loop (5 s)"]
    print("| way | " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|")
    for way in ways:
        with tempfile.TemporaryDirectory() as directory:
            events, log = Path(directory) / "events", Path(directory) / "log"
            events.touch()
            cells = []
            with serving(way, events, log) as port:
                for index, route in enumerate(["slow", "stream", "background", "blocking"]):
                    rid = f"{route}-{index}"
                    response, took, ending = get(port, f"/{route}?id={rid}")
                    time.sleep(2.5 if route != "blocking" else 1)  # the handler's fate
                    seen = [
                        line.split()[1]
                        for line in events.read_text().splitlines()
                        if line.startswith(rid + " ")
                    ]
                    cell = describe(response, took, ending)
                    if seen:
                        cell += f"; handler {', '.join(seen)}"
                    elif route in ("slow", "stream"):
                        cell += "; handler still at work"
                    cells.append(cell)
            errors = [line for line in log.read_text().splitlines() if ERROR.search(line)]
            print(f"| {way} | " + " | ".join(cells) + f" |  errors logged: {len(errors)}")


def latency(requests: int, concurrency: int) -> None:
    from deadline_apps import BUDGET

    with tempfile.TemporaryDirectory() as directory:
        events, log = Path(directory) / "events", Path(directory) / "log"
        events.touch()
        late: list[float] = []
        lock = threading.Lock()
        with serving("asgi_disconnect", events, log) as port:

            def one(index: int) -> None:
                response, took, _ = get(port, f"/slow?id=l{index}")
                assert response.startswith(b"HTTP/1.1 504"), response
                with lock:
                    late.append((took - BUDGET) * 1000)

            for start in range(0, requests, concurrency):
                threads = [
                    threading.Thread(target=one, args=(index,))
                    for index in range(start, min(requests, start + concurrency))
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
        late.sort()
        p99 = late[min(len(late) - 1, int(len(late) * 0.99))]
        print(
            f"deadline to the whole 504, {len(late)} requests, {concurrency} at a time: "
            f"p50 {statistics.median(late):.2f} ms, p99 {p99:.2f} ms, max {late[-1]:.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--skip-comparison", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if not args.skip_comparison:
        compare(["asgi_disconnect", "wait_for", "wait_for_call_next", "gunicorn --timeout 1"])
    latency(args.requests, args.concurrency)


if __name__ == "__main__":
    main()
