"""FastAPI: async endpoints are cancelled; sync ones (run in threads) can check.

uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import time

import anyio
from fastapi import FastAPI, Request

from asgi_disconnect import DisconnectMiddleware, is_disconnected

app = FastAPI()
app.add_middleware(DisconnectMiddleware, exclude_paths=["/health"])


@app.get("/report")
async def report(seconds: float = 3.0) -> dict[str, str]:
    await anyio.sleep(seconds)  # cancelled if the client leaves
    return {"report": "ready"}


@app.get("/export")
def export(request: Request, rows: int = 300) -> dict[str, int]:
    # A thread cannot be cancelled: check between units of work instead.
    done = 0
    for _ in range(rows):
        if is_disconnected(request.scope):
            break
        time.sleep(0.01)
        done += 1
    return {"rows": done}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
