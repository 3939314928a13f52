from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO

import anyio
from asgiref.sync import sync_to_async
from django.db import DatabaseError, connection, transaction
from django.db.models.expressions import RawSQL
from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse

from asgi_disconnect import is_disconnected, wait_disconnected

from .._common import FOREVER, record, recorded, request_id
from .models import Mark


def rid_of(request: HttpRequest) -> str:
    return request_id({"query_string": request.META.get("QUERY_STRING", "").encode()})


async def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"hello " + request.body, headers={"x-served-by": "django"})


def hello_sync(request: HttpRequest) -> HttpResponse:
    # Django's own test view for ticket 33738: a sync view that answers at once.
    return HttpResponse(f"Hello {request.GET.get('name') or 'World'}!")


def delayed_hello_sync(request: HttpRequest) -> HttpResponse:
    time.sleep(1)
    return HttpResponse(f"Hello {request.GET.get('name') or 'World'}!")


async def work(request: HttpRequest) -> HttpResponse:
    async with recorded(rid_of(request)):
        await anyio.sleep(FOREVER)
    return HttpResponse("done")


async def quick(request: HttpRequest) -> HttpResponse:
    async with recorded(rid_of(request)):
        await anyio.sleep(0.05)
    return HttpResponse("done")


def work_sync(request: HttpRequest) -> HttpResponse:
    # A thread cannot be cancelled: it checks between units of work.
    rid = rid_of(request)
    record(rid, "started")
    for _ in range(int(FOREVER / 0.01)):
        if is_disconnected(request.scope):  # type: ignore[attr-defined]
            record(rid, "stopped")
            return HttpResponse("stopped")
        time.sleep(0.01)
    record(rid, "finished")
    return HttpResponse("done")


def sleepy_sync(request: HttpRequest) -> HttpResponse:
    rid = rid_of(request)
    record(rid, "started")
    time.sleep(1)
    record(rid, f"finished-with-body:{len(request.body)}")
    return HttpResponse("ok")


async def upload(request: HttpRequest) -> HttpResponse:
    # Django reads the whole body before it calls the view.
    record(rid_of(request), f"body:{len(request.body)}")
    return HttpResponse(f"got {len(request.body)} bytes")


async def events(rid: str) -> AsyncIterator[bytes]:
    async with recorded(rid):
        for i in range(int(FOREVER / 0.02)):
            yield b"data: %d\n\n" % i
            await anyio.sleep(0.02)


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(events(rid_of(request)), content_type="text/event-stream")


def query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def db(request: HttpRequest) -> HttpResponse:
    # Opens this request's database connection, then works until the client leaves.
    await sync_to_async(query)()
    async with recorded(rid_of(request)):
        await anyio.sleep(FOREVER)
    return HttpResponse("done")


#: Requests that /held saw, by id, for the tests to look at once they are over.
HELD: dict[str, HttpRequest] = {}
#: Files that /download sent, by id.
SENT_FILES: dict[str, BinaryIO] = {}


async def held(request: HttpRequest) -> HttpResponse:
    HELD[rid_of(request)] = request
    async with recorded(rid_of(request)):
        await anyio.sleep(FOREVER)
    return HttpResponse("done")


def download(request: HttpRequest) -> FileResponse:
    # 4 MiB of a temporary file: Django streams it 64 KiB at a time.
    file = tempfile.TemporaryFile()  # noqa: SIM115 (FileResponse closes it)
    file.write(b"z" * (4 << 20))
    file.seek(0)
    SENT_FILES[rid_of(request)] = file
    return FileResponse(file)


async def grace(request: HttpRequest) -> HttpResponse:
    rid = rid_of(request)
    record(rid, "started")
    try:
        await wait_disconnected(request.scope)  # type: ignore[attr-defined]
        record(rid, "told")
        await anyio.sleep(FOREVER)  # clean-up that takes longer than its grace period
    except anyio.get_cancelled_exc_class():
        # Django >= 5 cancels the view itself when it hears the disconnect: no grace.
        record(rid, "cancelled")
        raise
    return HttpResponse("done")


def driver() -> str:
    """The DB-API module Django runs on: psycopg, psycopg2 or sqlite3."""
    return str(getattr(connection, "Database").__name__)  # noqa: B009 (not in django-stubs)


def long_statement(rid: str, seconds: float) -> str:
    """A statement that runs ``seconds`` on the server, which names its request."""
    if connection.vendor == "postgresql":
        return f"SELECT pg_sleep({seconds:f}) /* id={rid} */"
    rows = int(seconds * 4_000_000)  # SQLite counts about that many a second
    return (
        f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) "
        f"SELECT count(*) /* id={rid} */ FROM c"
    )


def statements(rid: str, seconds: float, count: int = 1) -> None:
    """Mark the request in a transaction, then run ``count`` long statements in it."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS marks (rid varchar(100))")
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("INSERT INTO marks VALUES (%s)", [rid])
            record(rid, f"driver:{driver()}")
            record(rid, "started")
            for _ in range(count):
                cursor.execute(long_statement(rid, seconds))
    except DatabaseError:
        record(rid, "statement-failed")
        # Rolled back: the connection is usable again.
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM marks WHERE rid = %s", [rid])
            record(rid, f"marks-after-rollback:{cursor.fetchone()[0]}")
        raise
    record(rid, "finished")


def statement_sync(request: HttpRequest) -> HttpResponse:
    seconds = float(request.GET.get("seconds", "10"))
    count = int(request.GET.get("count", "1"))
    statements(rid_of(request), seconds, count)
    return HttpResponse("done")


async def statement_async(request: HttpRequest) -> HttpResponse:
    seconds = float(request.GET.get("seconds", "10"))
    await sync_to_async(statements)(rid_of(request), seconds)
    return HttpResponse("done")


async def statement_orm(request: HttpRequest) -> HttpResponse:
    """The async ORM, which runs each query in a thread: one that sleeps on the server."""
    rid = rid_of(request)
    seconds = float(request.GET.get("seconds", "10"))
    await Mark.objects.acreate(rid=rid)
    record(rid, f"driver:{driver()}")
    record(rid, "started")
    slow = Mark.objects.filter(rid=rid).annotate(
        slept=RawSQL(f"pg_sleep(%s) IS NULL /* id={rid} */", (seconds,))
    )
    await slow.afirst()
    record(rid, "finished")
    return HttpResponse("done")


#: Work that /statement-after leaves running once it has answered.
BACKGROUND: set[asyncio.Task[None]] = set()


async def statement_after(request: HttpRequest) -> HttpResponse:
    rid = rid_of(request)
    seconds = float(request.GET.get("seconds", "1"))

    async def later() -> None:
        await asyncio.sleep(0.2)  # the response is complete, and the client may have left
        await sync_to_async(statements, thread_sensitive=False)(rid, seconds)

    task = asyncio.create_task(later())
    BACKGROUND.add(task)
    task.add_done_callback(BACKGROUND.discard)
    return HttpResponse("answered")


class SyncOnly:
    """A middleware that is sync only: Django runs it and the view in one thread, where it
    turns the view's exceptions into 500 responses (and logs them) itself."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        record(rid_of(request), f"status:{response.status_code}")
        return response
