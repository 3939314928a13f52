"""Soak: many requests against uvicorn on 127.0.0.1, a share of them abandoned at random
moments, and a check that nothing was lost.

    python tests/soak.py                       # 20,000 requests, as tests/test_soak.py runs it
    python tests/soak.py --requests 300000     # the long form, by hand

Abandoned requests leave while uploading, while the handler works, mid-stream, or right after
the response. It passes when the server logged no error, every abandoned handler that had
started was cancelled (and none after its response), every response the client read in full
was correct to the byte, the server's tasks are back to their number before the load, and its
resident memory grew by less than ``--max-growth-mb``. Bounded in count (``--requests``) and
in time (``--time-limit``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from served.soak_app import stream_part, upload_answer, work_answer
from servers import HOST, Events, Server, http_request

KINDS = ("upload", "work", "stream", "after")
CHUNK = 16 * 1024

#: The reports of the runs in this process, for pytest's summary.
REPORTS: list[Report] = []


@dataclass
class Request:
    rid: str
    kind: str
    abandoned: bool
    #: Filled in by the client.
    closed_at: float | None = None
    problem: str | None = None


@dataclass
class Report:
    requests: int = 0
    seconds: float = 0.0
    fates: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    rss_kib: tuple[int, int] = (0, 0)
    tasks: tuple[int, int] = (0, 0)
    server_errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and not self.server_errors

    def lines(self) -> list[str]:
        ms = sorted(value * 1000 for value in self.latencies)
        lines = [
            f"requests            {self.requests} in {self.seconds:.1f} s "
            f"({self.requests / max(self.seconds, 1e-9):.0f}/s)",
            *(f"  {fate:<28}{count}" for fate, count in sorted(self.fates.items())),
            f"server errors       {len(self.server_errors)}",
            f"tasks in the loop   {self.tasks[0]} before, {self.tasks[1]} after",
            f"resident memory     {self.rss_kib[0] / 1024:.1f} MiB after warm-up, "
            f"{self.rss_kib[1] / 1024:.1f} MiB at the end "
            f"({(self.rss_kib[1] - self.rss_kib[0]) / 1024:+.1f} MiB)",
        ]
        if len(ms) > 1:
            p99 = statistics.quantiles(ms, n=100)[98]
            lines.append(
                f"close to cancel     p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, "
                f"max {ms[-1]:.2f} ms (n={len(ms)})"
            )
        lines += [f"PROBLEM: {problem}" for problem in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"... and {len(self.problems) - 20} more problems")
        lines += [f"SERVER: {line}" for line in self.server_errors[:20]]
        lines.append("PASSED" if self.passed else "FAILED")
        return lines


# -- the client -------------------------------------------------------------------------


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    raw_head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return int(status_line.split(" ")[1]), headers, body


def dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        data = data[size + 2 :]


async def exchange(port: int, request: Request, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        expected = await talk(reader, writer, request, rng)
        if expected is not None:
            response = await reader.read()
            status, _, body = parse(response)
            if status != 200 or body != expected:
                request.problem = f"{request.rid}: {status} {body[:80]!r}, not {expected[:80]!r}"
    finally:
        writer.close()
        request.closed_at = time.monotonic()
        with contextlib.suppress(OSError):  # a reset, for a client that left
            await writer.wait_closed()


async def talk(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request, rng: random.Random
) -> bytes | None:
    """Send the request; return the response expected, or None when leaving early."""
    rid, abandoned = request.rid, request.abandoned
    if request.kind == "upload":
        sizes = [50_000, 300_000] if abandoned else [0, 1, 1000, 50_000, 300_000]
        body = rng.randbytes(rng.choice(sizes))
        writer.write(http_request("POST", f"/upload?id={rid}", content_length=len(body)))
        chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        stop = rng.randrange(len(chunks)) if abandoned else len(chunks)
        for chunk in chunks[:stop]:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.001)  # a slow client
        if abandoned:
            await asyncio.sleep(rng.uniform(0, 0.02))
            return None
        return upload_answer(body)
    if request.kind == "work":
        ms = 5000 if abandoned else rng.randint(0, 20)
        writer.write(http_request("GET", f"/work?id={rid}&ms={ms}"))
        if abandoned:
            await asyncio.sleep(rng.uniform(0, 0.1))
            return None
        return work_answer(ms)
    if request.kind == "stream":
        n = 1000 if abandoned else rng.randint(1, 10)
        writer.write(http_request("GET", f"/stream?id={rid}&n={n}&ms=5"))
        if abandoned:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(rng.uniform(0, 0.15))
            return None
        return b"".join(stream_part(i) for i in range(n))
    writer.write(http_request("GET", f"/after?id={rid}"))
    if abandoned:
        # Right after the response: leave as soon as its last byte is in.
        await reader.readuntil(b"answered\n")
        return None
    return b"answered\n"


async def load(
    port: int, requests: list[Request], concurrency: int, seed: int, deadline: float
) -> None:
    rng = random.Random(seed)
    queue = iter(requests)

    async def worker(worker_rng: random.Random) -> None:
        for request in queue:
            if time.monotonic() > deadline:
                return
            try:
                await asyncio.wait_for(exchange(port, request, worker_rng), timeout=30)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                if not request.abandoned:
                    request.problem = f"{request.rid}: {type(exc).__name__}: {exc}"

    await asyncio.gather(*(worker(random.Random(rng.random())) for _ in range(concurrency)))


def plan(count: int, abandon: float, seed: int, label: str) -> list[Request]:
    rng = random.Random(seed)
    return [Request(f"{label}{i}", rng.choice(KINDS), rng.random() < abandon) for i in range(count)]


# -- what the server saw --------------------------------------------------------------------


def read_events(path: Path) -> dict[str, dict[str, float]]:
    events: dict[str, dict[str, float]] = {}
    for line in Events(path).lines():
        rid, event, at = line.split(" ")
        events.setdefault(rid, {}).setdefault(event, float(at))
    return events


def settled(events: dict[str, dict[str, float]]) -> bool:
    ends = {"cancelled", "finished", "stopped"}
    return all(ends & seen.keys() for seen in events.values())


def rss_kib(pid: int) -> int:
    """The resident memory of a server: its process and its workers (its process group)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pid:  # the process group, which the server leads
                for line in (stat.parent / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return total


async def server_stats(port: int) -> dict[str, int]:
    """The tasks in the server's loop and the middleware's request objects still alive."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(http_request("GET", "/bare/stats"))
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    return {name: int(value) for name, value in json.loads(parse(response)[2]).items()}


async def quiet(port: int, path: Path, timeout: float = 30.0) -> dict[str, dict[str, float]]:
    """Wait for every handler to end, and for the server's tasks to settle."""
    deadline = time.monotonic() + timeout
    while True:
        events = read_events(path)
        if settled(events) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # connections still closing
    return events


def judge(requests: list[Request], events: dict[str, dict[str, float]], report: Report) -> None:
    for request in requests:
        seen = events.get(request.rid, {})
        fate = f"{request.kind}, {'left' if request.abandoned else 'stayed'}"
        if request.problem is not None:
            report.problems.append(request.problem)
            continue
        if request.abandoned and request.kind != "after":
            if not seen:
                report.fates["left before the app started"] += 1
                continue
            if "cancelled" not in seen or "finished" in seen:
                report.problems.append(f"{request.rid} ({fate}): {sorted(seen)}, not cancelled")
                continue
            assert request.closed_at is not None
            report.latencies.append(seen["cancelled"] - request.closed_at)
            report.fates[f"{request.kind} left, cancelled"] += 1
        else:
            if "finished" not in seen or "cancelled" in seen:
                report.problems.append(f"{request.rid} ({fate}): {sorted(seen)}, not finished")
                continue
            report.fates[f"{request.kind} {'left after' if request.abandoned else 'ok'}"] += 1


async def soak(
    requests: int, abandon: float, concurrency: int, seed: int, time_limit: float, workdir: Path
) -> Report:
    report = Report()
    events_path = workdir / "events"
    events_path.touch()
    server = Server(
        "uvicorn-httptools",
        "served.soak_app:app",
        {"ASGI_DISCONNECT_EVENTS": str(events_path)},
        workdir / "server.log",
    )
    server.start()
    try:
        assert server.process is not None
        deadline = time.monotonic() + time_limit
        # Warm up: imports, code paths and allocator pools that a long-running server has.
        warm = plan(max(requests // 10, 200), abandon, seed + 1, "w")
        await load(server.port, warm, concurrency, seed + 1, deadline)
        await quiet(server.port, events_path)
        before = (rss_kib(server.process.pid), (await server_stats(server.port))["tasks"])

        main = plan(requests, abandon, seed, "r")
        started = time.monotonic()
        await load(server.port, main, concurrency, seed, deadline)
        report.seconds = time.monotonic() - started
        report.requests = sum(request.closed_at is not None for request in main)
        if report.requests < requests:
            report.problems.append(f"only {report.requests} requests within {time_limit} s")
        events = await quiet(server.port, events_path)
        stats = await server_stats(server.port)
        after = (rss_kib(server.process.pid), stats["tasks"])
        report.rss_kib = (before[0], after[0])
        report.tasks = (before[1], after[1])
        # Freed by reference counting, not left for the garbage collector.
        if stats["exchanges_before_gc"]:
            report.problems.append(f"{stats['exchanges_before_gc']} requests' state still alive")
        judge([r for r in main if r.closed_at is not None], events, report)
    finally:
        server.stop()
    report.server_errors = server.errors()
    return report


def check_resources(report: Report, max_growth_mb: float) -> None:
    if report.tasks[1] > report.tasks[0]:
        report.problems.append(f"{report.tasks[1] - report.tasks[0]} tasks more than before")
    growth = (report.rss_kib[1] - report.rss_kib[0]) * 1024
    if growth >= max_growth_mb * 1_000_000:
        report.problems.append(f"resident memory grew by {growth / 1e6:.1f} MB")


def run(
    requests: int = 20_000,
    abandon: float = 0.3,
    concurrency: int = 32,
    seed: int = 1,
    time_limit: float = 1800.0,
    max_growth_mb: float = 10.0,
) -> Report:
    with tempfile.TemporaryDirectory(prefix="asgi-disconnect-soak-") as workdir:
        report = asyncio.run(soak(requests, abandon, concurrency, seed, time_limit, Path(workdir)))
    check_resources(report, max_growth_mb)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--abandon", type=float, default=0.3, help="share of clients that leave")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "1")))
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds")
    parser.add_argument("--max-growth-mb", type=float, default=10.0)
    args = parser.parse_args()
    report = run(
        args.requests,
        args.abandon,
        args.concurrency,
        args.seed,
        args.time_limit,
        args.max_growth_mb,
    )
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
