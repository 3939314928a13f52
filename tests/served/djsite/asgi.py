"""The project's ``asgi.py``: the bare Django app at ``/bare``, for comparison.

``/timeout`` gives each request a second, ``/keep`` leaves database statements running.
``/channels`` and ``/passthrough`` put something between the middleware and Django's handler:
Channels' router, and a plain wrapper, as Sentry's and OpenTelemetry's are.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "served.djsite.settings")

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application
from django.core.signals import request_finished

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import Receive, Scope, Send

from .._common import GRACE, dispatch, record

django_app = get_asgi_application()


def on_finished(**kwargs: Any) -> None:
    record("-", "request_finished")


request_finished.connect(on_finished, weak=False)


class Passthrough:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


application = dispatch(
    {
        "": DisconnectMiddleware(django_app),
        "/channels": DisconnectMiddleware(ProtocolTypeRouter({"http": django_app})),
        "/passthrough": DisconnectMiddleware(Passthrough(django_app)),
        "/bare": django_app,
        "/grace": DisconnectMiddleware(django_app, grace_period=GRACE),
        "/timeout": DisconnectMiddleware(django_app, timeout=1.0),
        "/keep": DisconnectMiddleware(django_app, cancel_statements=False),
    }
)
