"""The Starlette apps and the token upstream that ``saves.py`` runs under uvicorn (``--factory``).

Each factory builds one app for one process: the bare process never builds the middleware, so
none of its hooks (SQLAlchemy's events) are installed there. Configured by environment:

- ``SAVES_EVENTS``: a file the apps append ``<id> <event> <time.monotonic()>`` lines to;
  CLOCK_MONOTONIC is shared by the processes of one machine, so the benchmark can compare;
- ``SAVES_SQLITE``, ``SAVES_SQLITE_ROWS``: the SQLite file, and how many rows the slow
  statement counts (the benchmark calibrates it to run about 10 s);
- ``SAVES_POSTGRES_PORT``: PostgreSQL on 127.0.0.1, user ``postgres`` (the PostgreSQL
  routes answer 503 without it);
- ``SAVES_UPSTREAM``: the token upstream's base URL, for ``/proxy``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
from sqlalchemy import Engine, create_engine, text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from asgi_disconnect import ASGIApp, Message, Receive, Scope, Send

#: The comment tags the statement with its request's id: pg_stat_activity shows the text.
PG_SLEEP = "SELECT pg_sleep(10) /* saves {} */"
SLOW_SQLITE = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {}) "
    "SELECT count(*) FROM c"
)
TOKENS = 200
TOKEN_INTERVAL = 0.02
TOKEN = b"token "
# Ids go into SQL text (see PG_SLEEP): nothing but these characters may.
_ID = re.compile(r"[a-z0-9-]{1,60}")


def request_id(value: str | None) -> str:
    if value is None or not _ID.fullmatch(value):
        raise HTTPException(400, "id must be 1-60 of a-z, 0-9 and -")
    return value


def record(rid: str, event: str) -> None:
    # One short write to a file opened for appending: lines from threads and processes do not
    # interleave.
    with open(os.environ["SAVES_EVENTS"], "a") as events:
        events.write(f"{rid} {event} {time.monotonic():.6f}\n")


def postgres_url(driver: str) -> str | None:
    port = os.environ.get("SAVES_POSTGRES_PORT")
    return None if port is None else f"postgresql{driver}://postgres@127.0.0.1:{port}/postgres"


def starlette_app() -> Starlette:
    sqlite = create_engine(f"sqlite:///{os.environ['SAVES_SQLITE']}")
    slow_sqlite = SLOW_SQLITE.format(int(os.environ["SAVES_SQLITE_ROWS"]))
    pg_url = postgres_url("+psycopg")
    conninfo = postgres_url("")
    pg: Engine | None = None
    pool: Engine | None = None
    if pg_url is not None:
        pg = create_engine(pg_url)
        # Two connections, and nothing past them: a third request waits for one to come back.
        pool = create_engine(pg_url, pool_size=2, max_overflow=0, pool_timeout=30)
    # One client for the app's life, as apps keep one; trust_env=False so that a proxy named
    # in the environment never stands between it and 127.0.0.1.
    client = httpx.AsyncClient(trust_env=False, timeout=30)
    upstream = os.environ.get("SAVES_UPSTREAM", "")

    def postgres(engine: Engine | None) -> Engine:
        if engine is None:
            raise HTTPException(503, "no PostgreSQL")
        return engine

    def select_one(engine: Engine) -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def warm(request: Request) -> PlainTextResponse:
        # First connections, dialect set-up and imports, so that a measured request's statement
        # is running well before its client leaves.
        await run_in_threadpool(select_one, sqlite)
        if conninfo is not None:
            async with await psycopg.AsyncConnection.connect(conninfo) as conn:
                await conn.execute("SELECT 1")
            await run_in_threadpool(select_one, postgres(pg))
            await run_in_threadpool(select_one, postgres(pool))
        await client.get(f"{upstream}/count", params={"id": "warm", "after": "0"})
        return PlainTextResponse("warm")

    async def pg_async(request: Request) -> PlainTextResponse:
        if conninfo is None:
            raise HTTPException(503, "no PostgreSQL")
        rid = request_id(request.query_params.get("id"))
        async with await psycopg.AsyncConnection.connect(conninfo) as conn:
            # As bytes: psycopg types a str query as a LiteralString, which this is not.
            await conn.execute(PG_SLEEP.format(rid).encode())
        return PlainTextResponse("ran to its end")

    def pg_statement(request: Request) -> PlainTextResponse:  # def: in Starlette's threads
        rid = request_id(request.query_params.get("id"))
        with postgres(pg).connect() as conn:
            conn.execute(text(PG_SLEEP.format(rid)))
        return PlainTextResponse("ran to its end")

    def pool_hold(request: Request) -> PlainTextResponse:
        rid = request_id(request.query_params.get("id"))
        with postgres(pool).connect() as conn:
            conn.execute(text(PG_SLEEP.format(rid)))
        return PlainTextResponse("ran to its end")

    def pool_fresh(request: Request) -> PlainTextResponse:
        with postgres(pool).connect() as conn:
            value = conn.execute(text("SELECT 1")).scalar()
        return PlainTextResponse(f"{value}")

    def sqlite_statement(request: Request) -> PlainTextResponse:
        rid = request_id(request.query_params.get("id"))
        try:
            with sqlite.connect() as conn:
                record(rid, "started")
                conn.execute(text(slow_sqlite)).fetchall()
        finally:
            # Ran to its end or was interrupted: either way the thread is free from here.
            record(rid, "ended")
        return PlainTextResponse("ran to its end")

    async def proxy(request: Request) -> PlainTextResponse:
        rid = request_id(request.query_params.get("id"))
        # The whole answer before answering, as an endpoint that post-processes it must.
        response = await client.get(f"{upstream}/tokens", params={"id": rid})
        return PlainTextResponse(f"{response.content.count(TOKEN)} tokens")

    return Starlette(
        routes=[
            Route("/warm", warm),
            Route("/pg-async", pg_async),
            Route("/pg-sqlalchemy", pg_statement),
            Route("/pool-hold", pool_hold),
            Route("/pool-fresh", pool_fresh),
            Route("/sqlite", sqlite_statement),
            Route("/proxy", proxy),
        ]
    )


def wrapped_starlette_app() -> ASGIApp:
    from asgi_disconnect import DisconnectMiddleware

    return DisconnectMiddleware(starlette_app())


class Stream:
    """When each token of one stream was generated, and whether the stream is over."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.over = False


def upstream() -> ASGIApp:
    """A plain ASGI app that streams tokens, as a model server does, and counts them.

    It stops generating once its client has gone, as model servers do (vLLM and TGI abort a
    generation whose client left): what it generates for nobody is what its client, the
    proxy, kept reading for nobody.
    """
    streams: dict[str, Stream] = {}

    async def answer(send: Send, body: bytes, status: int = 200) -> None:
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def tokens(rid: str, receive: Receive, send: Send) -> None:
        stream = streams[rid] = Stream()
        left = asyncio.Event()

        async def watch() -> None:
            message: Message = {}
            while message.get("type") != "http.disconnect":
                message = await receive()
            left.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(TOKENS):
                if left.is_set():
                    break
                stream.times.append(time.monotonic())
                await send({"type": "http.response.body", "body": TOKEN, "more_body": True})
                await asyncio.sleep(TOKEN_INTERVAL)
            await send({"type": "http.response.body", "body": b""})
        finally:
            stream.over = True
            watcher.cancel()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        query = dict(
            pair.split("=", 1)
            for pair in scope["query_string"].decode().split("&")
            if pair.count("=") == 1
        )
        rid = query.get("id", "")
        if scope["path"] == "/tokens" and _ID.fullmatch(rid):
            await tokens(rid, receive, send)
        elif scope["path"] == "/count":
            # Tokens generated before and after a moment (the client leaving the proxy).
            stream = streams.get(rid, Stream())
            after = float(query.get("after", "0"))
            later = sum(1 for moment in stream.times if moment > after)
            counts: dict[str, Any] = {
                "before": len(stream.times) - later,
                "after": later,
                "over": stream.over,
            }
            await answer(send, json.dumps(counts).encode())
        else:
            await answer(send, b"not found", 404)

    return app
