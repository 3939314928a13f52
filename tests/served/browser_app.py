"""A page and the endpoints it calls, all behind the middleware, for a real browser.

``/`` is the page; ``/slow`` works for a long time before it answers; ``/events`` is a
server-sent events stream that never ends on its own. Both record on the side channel that
they started, the HTTP version they were served over (``http-1.1``, ``http-2``), and that
they were cancelled (``anyio.get_cancelled_exc_class()`` caught, and raised again) or
finished.
"""

from __future__ import annotations

import anyio

from asgi_disconnect import DisconnectMiddleware
from asgi_disconnect._types import Receive, Scope, Send

from ._common import FOREVER, record, request_id

PAGE = b"""<!doctype html>
<title>page</title>
<script>
window.results = {};
function slow(id) {
  window.results[id] = "pending";
  fetch(`/slow?id=${id}`).then(
    async (response) => { window.results[id] = `status ${response.status}`; },
    (error) => { window.results[id] = `error ${error.name}`; },
  );
}
function aborted(id) {
  const controller = new AbortController();
  window.results[id] = "pending";
  fetch(`/slow?id=${id}`, {signal: controller.signal}).then(
    async (response) => { window.results[id] = `status ${response.status}`; },
    (error) => { window.results[id] = `error ${error.name}`; },
  );
  return () => controller.abort();
}
function events(id) {
  const source = new EventSource(`/events?id=${id}`);
  window.results[id] = 0;
  source.onmessage = () => { window.results[id] += 1; };
  return source;
}
function protocol() {
  return performance.getEntriesByType("navigation")[0].nextHopProtocol;
}
</script>
"""


async def handler(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    route = scope["path"]
    if route == "/":
        headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": PAGE})
        return
    if route not in ("/slow", "/events"):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    rid = request_id(scope)
    record(rid, "started")
    record(rid, f"http-{scope.get('http_version', '-')}")
    try:
        if route == "/slow":
            await anyio.sleep(FOREVER)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})
        else:
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            with anyio.move_on_after(FOREVER):
                for i in range(1_000_000):
                    body = b"data: %d\n\n" % i
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    await anyio.sleep(0.1)
            await send({"type": "http.response.body", "body": b""})
    except anyio.get_cancelled_exc_class():
        record(rid, "cancelled")
        raise
    record(rid, "finished")


app = DisconnectMiddleware(handler)
