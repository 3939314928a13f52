"""Django's own ASGI handler behind the middleware (Django >= 5 listens itself)."""

from __future__ import annotations

import asyncio
import os

import anyio
import pytest
from communicator import communicate, http_scope

from asgi_disconnect import DisconnectMiddleware

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoapp.settings")


@pytest.fixture(scope="module")
def application():  # type: ignore[no-untyped-def]
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


async def test_a_django_view_is_cancelled_and_request_finished_fires(application) -> None:  # type: ignore[no-untyped-def]
    from django.core.signals import request_finished
    from djangoapp.urls import events

    finished: list[str] = []

    def on_finished(**kwargs: object) -> None:
        finished.append("request_finished")

    request_finished.connect(on_finished)
    events.clear()
    before = asyncio.all_tasks()
    try:
        scope = http_scope(method="GET", path="/slow")
        async with communicate(DisconnectMiddleware(application), scope) as c:
            await c.send_body(b"")
            for _ in range(500):
                if events:
                    break
                await anyio.sleep(0.01)
            await c.disconnect()
            await c.wait()
            assert c.error is None
            assert await c.receive_nothing()
            assert asyncio.all_tasks() - before == {asyncio.current_task()} - before
    finally:
        request_finished.disconnect(on_finished)
    assert events == ["view started", "view cancelled"]
    assert finished == ["request_finished"]


async def test_a_django_response_is_unchanged(application) -> None:  # type: ignore[no-untyped-def]
    scope = http_scope(method="POST", path="/fast", headers=[(b"host", b"x")])
    async with communicate(DisconnectMiddleware(application), scope) as c:
        await c.send_body(b"wor", b"ld")
        start = await c.receive_output()
        body = await c.receive_output()
        await c.wait()
    assert start["status"] == 200
    assert body["body"] == b"hello world"
