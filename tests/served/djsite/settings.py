from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "served.djsite.urls"
# For its model of the marks table (models.py), which the async ORM's statement reads.
INSTALLED_APPS: list[str] = ["served.djsite"]
MIDDLEWARE: list[str] = []
if os.environ.get("SERVED_SYNC_MIDDLEWARE"):
    MIDDLEWARE = ["served.djsite.views.SyncOnly"]
USE_TZ = True
LOGGING_CONFIG = None

DATABASES: dict[str, dict[str, Any]]
if os.environ.get("SERVED_POSTGRES_DRIVER") == "psycopg2":
    # Django takes psycopg 3 when it is installed, and psycopg2 only without it.
    sys.modules["psycopg"] = None  # type: ignore[assignment]
if os.environ.get("SERVED_POSTGRES_PORT"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "postgres",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": os.environ["SERVED_POSTGRES_PORT"],
            # Lets the tests count this project's connections in pg_stat_activity.
            "OPTIONS": {"application_name": "djsite"},
        }
    }
    if os.environ.get("SERVED_POSTGRES_POOL"):
        # Django >= 5.1 with psycopg_pool: a connection goes from request to request.
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": int(os.environ["SERVED_POSTGRES_POOL"]),
            "timeout": 30,
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get(
                "SERVED_SQLITE",
                os.path.join(tempfile.gettempdir(), "asgi-disconnect-djsite.sqlite3"),
            ),
        }
    }
