"""The Django project that ``saves.py`` runs under uvicorn (``--factory``), on PostgreSQL.

Settings, URLs and views in one module: ``SAVES_POSTGRES_PORT`` names the server (127.0.0.1,
user ``postgres``). The bare process never builds the middleware, so its execute wrapper is
never installed there.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import django
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import path

if TYPE_CHECKING:
    from asgi_disconnect import ASGIApp

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmarks-only",
    ALLOWED_HOSTS=["*"],  # served on 127.0.0.1 only
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[],
    USE_TZ=True,
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "postgres",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("SAVES_POSTGRES_PORT", "5432"),
        }
    },
)
django.setup()

# As saves_apps.PG_SLEEP: the benchmark finds the statement in pg_stat_activity by its tag.
PG_SLEEP = "SELECT pg_sleep(10) /* saves {} */"
_ID = re.compile(r"[a-z0-9-]{1,60}")


def warm(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("warm")


def statement(request: HttpRequest) -> HttpResponse:  # sync: in asgiref's thread
    rid = request.GET.get("id", "")
    if not _ID.fullmatch(rid):  # it goes into the SQL text
        return HttpResponseBadRequest("id must be 1-60 of a-z, 0-9 and -")
    with connection.cursor() as cursor:
        cursor.execute(PG_SLEEP.format(rid))
    return HttpResponse("ran to its end")


urlpatterns = [path("warm", warm), path("statement", statement)]


def application() -> ASGIHandler:
    return get_asgi_application()


def wrapped_application() -> ASGIApp:
    from asgi_disconnect import DisconnectMiddleware

    return DisconnectMiddleware(get_asgi_application())
