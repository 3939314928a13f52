"""Raw ASGI: wrap the app.

uvicorn examples.raw_app:app
"""

from __future__ import annotations

import anyio

from asgi_disconnect import DisconnectMiddleware, Receive, Scope, Send


async def slow_report(scope: Scope, receive: Receive, send: Send) -> None:
    await anyio.sleep(3)  # slow work: cancelled if the client leaves
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"report ready"})


app = DisconnectMiddleware(slow_report)
