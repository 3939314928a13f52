"""What the middleware saves when a client leaves: the bare app against the same app wrapped.

Each app runs in a uvicorn process of its own (httptools, uvloop, one worker) on 127.0.0.1,
bare and wrapped in ``DisconnectMiddleware``: the Starlette app and the token upstream of
``saves_apps.py``, the Django project of ``saves_django.py``. A client on a raw socket sends
its request and closes the connection 0.5 s later.

- **statements**: the request runs a 10 s statement; seconds from the client closing to the
  statement gone from ``pg_stat_activity`` (polled every 10 ms), for psycopg 3's
  ``AsyncConnection`` in an async endpoint, SQLAlchemy's sync engine in a ``def`` endpoint
  and Django's raw cursor in a sync view; on SQLite, a recursive CTE calibrated to run about
  10 s, until its thread returns (the app records when);
- **pool**: SQLAlchemy, ``pool_size=2, max_overflow=0``: two requests abandoned 0.5 s into
  their 10 s statement, then a fresh one whose ``SELECT 1`` needs the pool: its response time;
- **tokens**: an endpoint reads an upstream's whole stream of 200 tokens (one every 20 ms)
  with ``httpx.AsyncClient``; how many the upstream generated once the client had left.

Each measurement is taken ``--rounds`` times; the table gives the medians, ``saves.json``
every round. PostgreSQL (Debian's, ``/usr/lib/postgresql/*/bin``) is started in a temporary
directory for the run; without it the rows that need it are skipped.

    python benchmarks/saves.py [--rounds 3] [--json benchmarks/saves.json]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import http.client
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from saves_apps import SLOW_SQLITE, TOKEN_INTERVAL, TOKENS
from server import free_port

HERE = Path(__file__).parent
T = TypeVar("T")

LEAVE_AFTER = 0.5
POLL = 0.01
#: A bound on every polling loop besides its deadline, should the clock misbehave.
MAX_POLLS = 20_000
SQLITE_SECONDS = 10.0
SKIPPED = "skipped: no PostgreSQL"
ERROR = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")


class Failed(RuntimeError):
    """A measurement that could not be taken as intended."""


def poll(check: Callable[[], T], until: float, interval: float = POLL) -> T | None:
    """The first truthy value ``check`` gives before ``until`` (monotonic), else None."""
    for _ in range(MAX_POLLS):
        value = check()
        if value:
            return value
        if time.monotonic() >= until:
            return None
        time.sleep(interval)
    return None


# -- processes -------------------------------------------------------------------------------


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(15)


@contextlib.contextmanager
def uvicorn(app: str, env: dict[str, str], log: Path) -> Iterator[int]:
    """Run the factory ``app`` (``module:function`` in benchmarks/) under uvicorn; its port."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--factory", "--app-dir", str(HERE)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--http", "httptools"]
    command += ["--loop", "uvloop", "--lifespan", "off", "--no-access-log"]
    # A bare server would otherwise wait at exit for the statements still running.
    command += ["--log-level", "warning", "--timeout-graceful-shutdown", "3"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise Failed(f"uvicorn {app} exited:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        if not poll(listening, time.monotonic() + 30, 0.05):
            raise Failed(f"uvicorn {app} did not start:\n{log.read_text()}")
        yield port
    finally:
        stop(process)


def find_postgres() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def running_postgres() -> Iterator[int | None]:
    """A throwaway server on 127.0.0.1 (user ``postgres``, no password): its port, or None."""
    bin_dir = find_postgres()
    if bin_dir is None:
        yield None
        return
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
        if runuser is None:
            print("running as root without runuser: PostgreSQL cannot start", file=sys.stderr)
            yield None
            return
        as_postgres = [runuser, "-u", "postgres", "--"]
    data = Path(tempfile.mkdtemp(prefix="asgi-disconnect-saves-pg-"))
    try:
        if as_postgres:
            shutil.chown(data, "postgres", "postgres")
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        subprocess.run([*as_postgres, *initdb, "--no-sync"], check=True, capture_output=True)
        port = free_port()
        server = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data)]
        server += ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]
        process = subprocess.Popen(
            [*as_postgres, *server], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:

            def ready() -> bool:
                if process.poll() is not None:
                    raise Failed("PostgreSQL exited at start")
                try:
                    psycopg.connect(**connection_args(port)).close()
                except psycopg.OperationalError:
                    return False
                return True

            if not poll(ready, time.monotonic() + 30, 0.05):
                raise Failed("PostgreSQL did not start")
            yield port
        finally:
            stop(process)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def connection_args(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "user": "postgres", "connect_timeout": 5}


def sqlite_rows(seconds: float) -> int:
    """How many rows the recursive CTE counts in about ``seconds`` on this machine."""
    sample = 2_000_000
    conn = sqlite3.connect(":memory:")
    try:
        statement = SLOW_SQLITE.format(sample)
        # The fastest of three: on a shared machine a neighbour slows a run, never speeds it.
        took = min(_timed(lambda: conn.execute(statement).fetchall())[1] for _ in range(3))
    finally:
        conn.close()
    return int(sample * seconds / took)


def _timed(call: Callable[[], T]) -> tuple[T, float]:
    start = time.monotonic()
    value = call()
    return value, time.monotonic() - start


# -- the client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """One variant's servers (bare or wrapped), and what they share."""

    starlette: int
    django: int | None
    upstream: int
    postgres: int | None
    events: Path


class Abandoned:
    """A request whose client closes its connection ``LEAVE_AFTER`` s after sending it."""

    def __init__(self, port: int, target: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        self.sent = time.monotonic()
        self.left: float | None = None

    def leave(self) -> float:
        if self.left is None:
            time.sleep(max(0.0, self.sent + LEAVE_AFTER - time.monotonic()))
            self.sock.close()
            self.left = time.monotonic()
        return self.left

    def __enter__(self) -> Abandoned:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.sock.close()


def get(port: int, target: str) -> bytes:
    # http.client rather than urllib: urllib would go through a proxy named in the environment.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise Failed(f"GET {target}: {response.status} {body[:200]!r}")
        return body
    finally:
        conn.close()


def running(conn: psycopg.Connection[Any], tag: str) -> int:
    """How many statements tagged ``tag`` (or ``tag-…``) are running on the server."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND pid <> pg_backend_pid() AND (query LIKE %s OR query LIKE %s)",
        (f"%saves {tag} */%", f"%saves {tag}-%"),
    ).fetchone()
    return 0 if row is None else int(row[0])


def events_of(path: Path, rid: str) -> dict[str, float]:
    found = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == rid:
            found[parts[1]] = float(parts[2])
    return found


# -- the measurements ------------------------------------------------------------------------

Measure = Callable[[Servers, str], float]


def statement_ran_on(server: str, path: str) -> Measure:
    """Seconds from the client leaving to its statement gone from ``pg_stat_activity``."""

    def measure(servers: Servers, rid: str) -> float:
        port = servers.django if server == "django" else servers.starlette
        assert port is not None and servers.postgres is not None
        # Autocommit: pg_stat_activity is a snapshot per transaction, so one per poll.
        with psycopg.connect(**connection_args(servers.postgres), autocommit=True) as conn:
            with Abandoned(port, f"{path}?id={rid}") as request:
                seen = poll(lambda: running(conn, rid), request.sent + LEAVE_AFTER)
                left = request.leave()
            if not seen:
                raise Failed(f"{path}: the statement was not running {LEAVE_AFTER} s in")
            if poll(lambda: running(conn, rid) == 0, left + 30) is None:
                raise Failed(f"{path}: the statement still ran 30 s after the client left")
            return time.monotonic() - left

    return measure


def sqlite_ran_on(servers: Servers, rid: str) -> float:
    """Seconds from the client leaving to the statement's thread returning (the app says when)."""
    with Abandoned(servers.starlette, f"/sqlite?id={rid}") as request:
        started = poll(lambda: events_of(servers.events, rid).get("started"), request.sent + 0.4)
        left = request.leave()
    if not started:
        raise Failed("/sqlite: the statement had not started 0.4 s in")
    ended = poll(lambda: events_of(servers.events, rid).get("ended"), left + 3 * SQLITE_SECONDS)
    if ended is None:
        raise Failed("/sqlite: the statement's thread had not returned after 30 s")
    return ended - left


def pool_waited(servers: Servers, rid: str) -> float:
    """The response time of a request that needs the pool that two abandoned requests held."""
    assert servers.postgres is not None
    with psycopg.connect(**connection_args(servers.postgres), autocommit=True) as conn:
        with (
            Abandoned(servers.starlette, f"/pool-hold?id={rid}-1") as first,
            Abandoned(servers.starlette, f"/pool-hold?id={rid}-2") as second,
        ):
            held = poll(lambda: running(conn, rid) == 2, first.sent + LEAVE_AFTER)
            first.leave()
            second.leave()
        if not held:
            raise Failed(f"/pool-hold: the two statements were not running {LEAVE_AFTER} s in")
        _, took = _timed(lambda: get(servers.starlette, "/pool-fresh"))
        # The next round starts with both connections back in the pool.
        if poll(lambda: running(conn, rid) == 0, time.monotonic() + 30) is None:
            raise Failed("/pool-hold: the statements still ran 30 s after their clients left")
    return took


def tokens_for_nobody(servers: Servers, rid: str) -> float:
    """How many tokens the upstream generated after the proxy's client had left."""
    with Abandoned(servers.starlette, f"/proxy?id={rid}") as request:
        left = request.leave()

    def counts() -> dict[str, Any] | None:
        found: dict[str, Any] = json.loads(get(servers.upstream, f"/count?id={rid}&after={left}"))
        return found if found["over"] else None

    # Over once all tokens are out (4 s in) or the upstream saw its client, the proxy, leave.
    final = poll(counts, left + TOKENS * TOKEN_INTERVAL + 5, 0.05)
    if final is None:
        raise Failed("/proxy: the upstream's stream was not over 5 s after its last token")
    if final["before"] == 0:
        raise Failed("/proxy: the upstream had generated nothing when the client left")
    return float(final["after"])


@dataclass(frozen=True)
class Case:
    key: str
    measure: str
    endpoint: str
    unit: str
    needs_postgres: bool
    run: Measure


STATEMENT = "Seconds a statement ran on after its client left"
CASES = [
    Case(
        "statement-pg-async",
        STATEMENT,
        "PostgreSQL: psycopg 3 `AsyncConnection`, Starlette async endpoint",
        "s",
        True,
        statement_ran_on("starlette", "/pg-async"),
    ),
    Case(
        "statement-pg-sqlalchemy",
        STATEMENT,
        "PostgreSQL: SQLAlchemy sync engine + psycopg 3, Starlette `def` endpoint",
        "s",
        True,
        statement_ran_on("starlette", "/pg-sqlalchemy"),
    ),
    Case(
        "statement-pg-django",
        STATEMENT,
        "PostgreSQL: Django sync view, raw cursor (psycopg 3)",
        "s",
        True,
        statement_ran_on("django", "/statement"),
    ),
    Case(
        "statement-sqlite",
        STATEMENT,
        "SQLite: SQLAlchemy sync engine, Starlette `def` endpoint (until its thread returns)",
        "s",
        False,
        sqlite_ran_on,
    ),
    Case(
        "pool",
        "How long a fresh request waited for the pool",
        "SQLAlchemy pool of 2 + psycopg 3, two requests abandoned in 10 s statements",
        "s",
        True,
        pool_waited,
    ),
    Case(
        "tokens",
        "Tokens generated for nobody",
        f"Starlette endpoint reading {TOKENS} streamed tokens with `httpx.AsyncClient`",
        "tokens",
        False,
        tokens_for_nobody,
    ),
]


def run_rounds(
    cases: list[Case], variants: dict[str, Servers], rounds: int
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {
        case.key: {variant: [] for variant in variants} for case in cases
    }
    for index in range(rounds):
        for variant, servers in variants.items():
            tag = f"{variant[0]}{index}-{uuid.uuid4().hex[:8]}"
            if variant == "bare":
                # The bare app's statements run their whole 10 s and its upstream its 4 s
                # whatever runs beside them: side by side, a round takes 10 s, not 50.
                with ThreadPoolExecutor(len(cases)) as pool:
                    futures = {c.key: pool.submit(c.run, servers, f"{tag}-{c.key}") for c in cases}
                for key, future in futures.items():
                    results[key][variant].append(future.result())
            else:
                # One at a time: the wrapped app's milliseconds are the point.
                for case in cases:
                    results[case.key][variant].append(case.run(servers, f"{tag}-{case.key}"))
        print(f"round {index + 1} of {rounds} done", file=sys.stderr)
    return results


def warm(variants: dict[str, Servers]) -> None:
    for servers in variants.values():
        get(servers.starlette, "/warm")
        if servers.django is not None:
            get(servers.django, "/warm")


def server_errors(logs: dict[str, Path]) -> dict[str, list[str]]:
    return {
        name: [line for line in log.read_text().splitlines() if ERROR.search(line)]
        for name, log in logs.items()
    }


# -- the report ------------------------------------------------------------------------------


def cell(case: Case, values: list[float] | None) -> str:
    if values is None:
        return SKIPPED
    median = statistics.median(values)
    return f"{median:.3f} s" if case.unit == "s" else f"{median:g}"


def table(results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| measure | endpoint | bare | with DisconnectMiddleware |",
        "|---|---|---|---|",
    ]
    for case in CASES:
        runs = results.get(case.key)
        bare = cell(case, None if runs is None else runs["bare"])
        wrapped = cell(case, None if runs is None else runs["wrapped"])
        lines.append(f"| {case.measure} | {case.endpoint} | {bare} | {wrapped} |")
    return "\n".join(lines)


def report(
    results: dict[str, dict[str, list[float]]],
    rounds: int,
    postgres_version: str | None,
    errors: dict[str, list[str]],
    seconds: float,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for case in CASES:
        row: dict[str, Any] = {
            "key": case.key,
            "measure": case.measure,
            "endpoint": case.endpoint,
            "unit": case.unit,
        }
        runs = results.get(case.key)
        if runs is None:
            row["skipped"] = SKIPPED
        else:
            for variant, values in runs.items():
                row[variant] = values
                row[f"{variant}_median"] = statistics.median(values)
        rows.append(row)
    return {
        "benchmark": "saves",
        "python": platform.python_version(),
        "postgres": postgres_version,
        "rounds": rounds,
        "leave_after_s": LEAVE_AFTER,
        "seconds": round(seconds, 1),
        "server_errors": errors,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="times each measurement is taken")
    parser.add_argument("--json", type=Path, default=HERE / "saves.json", help="where to write")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    began = time.monotonic()
    # Before the servers start: the sample should have the machine to itself.
    rows = sqlite_rows(SQLITE_SECONDS)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asgi-disconnect-")))
        postgres = stack.enter_context(running_postgres())
        postgres_version = None
        if postgres is not None:
            with psycopg.connect(**connection_args(postgres)) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                postgres_version = None if row is None else str(row[0])
        events = tmp / "events"
        events.touch()
        env = {
            "SAVES_EVENTS": str(events),
            "SAVES_SQLITE": str(tmp / "db.sqlite3"),
            "SAVES_SQLITE_ROWS": str(rows),
        }
        if postgres is not None:
            env["SAVES_POSTGRES_PORT"] = str(postgres)
        logs = {"upstream": tmp / "upstream.log"}
        upstream = stack.enter_context(uvicorn("saves_apps:upstream", env, logs["upstream"]))
        env["SAVES_UPSTREAM"] = f"http://127.0.0.1:{upstream}"
        variants: dict[str, Servers] = {}
        for variant, prefix in (("bare", ""), ("wrapped", "wrapped_")):
            logs[f"{variant} starlette"] = tmp / f"{variant}-starlette.log"
            starlette = stack.enter_context(
                uvicorn(f"saves_apps:{prefix}starlette_app", env, logs[f"{variant} starlette"])
            )
            django = None
            if postgres is not None:
                logs[f"{variant} django"] = tmp / f"{variant}-django.log"
                django = stack.enter_context(
                    uvicorn(f"saves_django:{prefix}application", env, logs[f"{variant} django"])
                )
            variants[variant] = Servers(starlette, django, upstream, postgres, events)
        warm(variants)
        cases = [case for case in CASES if postgres is not None or not case.needs_postgres]
        results = run_rounds(cases, variants, args.rounds)
        errors = server_errors(logs)
    seconds = time.monotonic() - began
    print(table(results))
    rounds = f"{args.rounds} round{'s' if args.rounds != 1 else ''}"
    against = f"PostgreSQL {postgres_version}" if postgres_version else "no PostgreSQL"
    print(f"\nmedians of {rounds}; {seconds:.0f} s in all; {against}")
    for name, lines in errors.items():
        if lines:
            print(f"{name} server logged {len(lines)} error lines, the first: {lines[0]}")
    data = report(results, args.rounds, postgres_version, errors, seconds)
    data["sqlite_rows"] = rows
    args.json.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
