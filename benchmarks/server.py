"""Benchmarks over a real server: uvicorn (httptools, uvloop, one worker) on 127.0.0.1.

* throughput and latency under ``wrk``, bare and wrapped app in alternating rounds;
* disconnect-to-cancellation latency over abandoned requests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def uvicorn(app: str, python: str = sys.executable, **env: str) -> Iterator[tuple[int, int]]:
    """Run ``benchmarks/apps.py:<app>`` under uvicorn; yield its port and pid."""
    port = free_port()
    command = [python, "-m", "uvicorn", f"apps:{app}", "--app-dir", str(HERE)]
    command += ["--port", str(port), "--http", "httptools", "--loop", "uvloop"]
    command += ["--lifespan", "off", "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start: {command}")
            time.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        print("installing wrk from Debian's packages", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True)
        wrk = shutil.which("wrk")
        assert wrk is not None
    return wrk


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: unlike throughput, untouched by a noisy neighbour."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(server: tuple[int, int], seconds: float, connections: int = 32) -> dict[str, float]:
    port, pid = server
    cpu_before = cpu_seconds(pid)
    output = subprocess.run(
        [
            ensure_wrk(),
            "-t1",
            f"-c{connections}",
            f"-d{round(seconds)}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    cpu = cpu_seconds(pid) - cpu_before
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "cpu_us": cpu / requests * 1e6}


def throughput(
    app: str, rounds: int, seconds: float, python: str = sys.executable, **env: str
) -> dict[str, Any]:
    """Bare and wrapped app under load in alternating rounds, both servers up all along."""
    bare_runs: list[dict[str, float]] = []
    wrapped_runs: list[dict[str, float]] = []
    with uvicorn(app, python, **env) as bare, uvicorn(f"wrapped_{app}", python, **env) as wrapped:
        wrk(bare, 1)  # warm up both
        wrk(wrapped, 1)
        for index in range(rounds):
            order = [(bare, bare_runs), (wrapped, wrapped_runs)]
            for port, runs in order[:: 1 if index % 2 == 0 else -1]:
                runs.append(wrk(port, seconds))
    ratios = [w["rps"] / b["rps"] for b, w in zip(bare_runs, wrapped_runs, strict=True)]
    cpu_ratios = [b["cpu_us"] / w["cpu_us"] for b, w in zip(bare_runs, wrapped_runs, strict=True)]

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    return {
        "benchmark": "uvicorn",
        "case": app,
        "bare_rps": median(bare_runs, "rps"),
        "wrapped_rps": median(wrapped_runs, "rps"),
        "ratio": statistics.median(ratios),
        "bare_cpu_us": median(bare_runs, "cpu_us"),
        "wrapped_cpu_us": median(wrapped_runs, "cpu_us"),
        "cpu_ratio": statistics.median(cpu_ratios),
        "bare_p50_ms": median(bare_runs, "p50_ms"),
        "wrapped_p50_ms": median(wrapped_runs, "p50_ms"),
        "bare_p99_ms": median(bare_runs, "p99_ms"),
        "wrapped_p99_ms": median(wrapped_runs, "p99_ms"),
    }


def _abandon(port: int, request_id: int, closed: dict[str, float], wait: float) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET /work?{request_id} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        time.sleep(wait)  # the handler is at work by now
        closed[str(request_id)] = time.monotonic()
    # leaving the block closes the socket: the client has gone


def disconnect_latency(
    requests: int, python: str = sys.executable, concurrency: int = 20, **env: str
) -> dict[str, Any]:
    """Time from a client closing its socket to its handler being cancelled."""
    closed: dict[str, float] = {}
    with uvicorn("wrapped_abandoned", python, **env) as (port, _):
        pending = list(range(requests))
        while pending:
            batch, pending = pending[:concurrency], pending[concurrency:]
            threads = [
                threading.Thread(target=_abandon, args=(port, i, closed, 0.05)) for i in batch
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
        time.sleep(0.5)  # let the last cancellations land
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/results", timeout=30) as answer:
            cancelled: dict[str, float] = json.load(answer)
    latencies = sorted((cancelled[key] - closed[key]) * 1e3 for key in cancelled)
    return {
        "benchmark": "disconnect latency",
        "requests": requests,
        "cancelled": len(cancelled),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan"),
    }


def main() -> None:
    for app in ("hello", "awaits_once", "starlette_hello"):
        print(json.dumps(throughput(app, rounds=2, seconds=2)))
    print(json.dumps(disconnect_latency(200)))


if __name__ == "__main__":
    main()
