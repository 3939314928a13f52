from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse
from django.urls import path

events: list[str] = []


async def slow(request: HttpRequest) -> HttpResponse:
    events.append("view started")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        events.append("view cancelled")
        raise
    return HttpResponse("done")  # pragma: no cover


async def fast(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"hello " + request.body)


urlpatterns = [path("slow", slow), path("fast", fast)]
