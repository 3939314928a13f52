"""Connection pools behind the middleware: every connection goes back to its pool.

SQLAlchemy's async session returns its connection to the pool in clean-up code that awaits.
Cancelled again at each of those awaits, it would be cut short: its connections would be
terminated rather than returned, each leaving a task destroyed while pending.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import anyio
import pytest
from backends import ASYNCIO
from communicator import communicate, http_scope
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ASYNCIO)]

REQUESTS = 200


@pytest.mark.fast_path  # delivered once: the session's clean-up awaits
async def test_sessions_of_abandoned_requests_return_their_connections(tmp_path: Path) -> None:
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        poolclass=AsyncAdaptedQueuePool,
        pool_size=5,
        max_overflow=5,
    )
    pool = engine.sync_engine.pool
    checked_out = 0
    most = 0

    def on_checkout(*args: Any) -> None:
        nonlocal checked_out, most
        checked_out += 1
        most = max(most, checked_out)

    def on_checkin(*args: Any) -> None:
        nonlocal checked_out
        checked_out -= 1

    event.listen(pool, "checkout", on_checkout)
    event.listen(pool, "checkin", on_checkin)
    problems: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda loop, context: problems.append(str(context.get("message")))
    )
    cancelled = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal cancelled
        await receive()
        try:
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
                scope["session open"].set()
                await session.execute(text("SELECT 2"))
                await anyio.sleep(30)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    middleware = DisconnectMiddleware(app)
    rng = random.Random(1)

    async def abandon() -> None:
        session_open = anyio.Event()
        async with communicate(middleware, {**http_scope(), "session open": session_open}) as c:
            await c.send_body(b"")
            await session_open.wait()
            await anyio.sleep(rng.uniform(0, 0.005))  # in a query, or after it
            await c.disconnect()

    try:
        for _ in range(REQUESTS // 20):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(abandon)
        await anyio.sleep(0.1)  # connections returned in callbacks have been returned
        assert cancelled == REQUESTS
        assert isinstance(pool, AsyncAdaptedQueuePool) and pool.checkedout() == 0
        assert checked_out == 0
        assert most <= 10
        assert problems == []
    finally:
        await engine.dispose()
