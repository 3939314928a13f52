"""Ending a response that a deadline cut, on each server in the way it takes quietly.

An app that returns in the middle of its response is what ASGI has for "this response is
incomplete", and every server then closes the connection without completing it, so that the
client sees it cut: no last chunk, or fewer bytes than its ``Content-Length``. They differ in
what else they do:

- hypercorn and granian close the connection, and log nothing.
- uvicorn and gunicorn close it, and log an error: right for an app that stopped by mistake.
  For a response the middleware cut on purpose, and reported itself, it drops that one line.
- daphne waits for the rest of the response for ever: the middleware closes the connection
  (over HTTP/2, resets the stream: closing it would end it as if complete).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

# Set in the task that serves the request, which the server logs from once the app returned.
_cut: ContextVar[bool] = ContextVar("asgi_disconnect_cut", default=False)

#: What servers log when an app returns in the middle of its response, by logger.
COMPLAINTS = {
    "uvicorn.error": "ASGI callable returned without completing response.",
    "gunicorn.error": (
        "ASGI application returned without completing the response; closing the connection"
    ),
}


class _DropComplaintOfACut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _cut.get() and record.msg == COMPLAINTS.get(record.name):
            _cut.set(False)
            return False
        return True


_FILTER = _DropComplaintOfACut()


def end_cut_response(send: Any, http_version: object) -> None:
    """Have the server end a started response without completing it, and without an error.

    :param send: the server's own ``send``.
    :param http_version: the scope's.
    """
    func = getattr(send, "func", None)  # daphne's: partial(Server.handle_reply, request)
    module = getattr(func, "__module__", None)  # None for some callables: not daphne's
    args = getattr(send, "args", None)
    if isinstance(module, str) and module.startswith("daphne.") and args:
        request = args[0]  # twisted's
        if http_version == "2":
            request.channel.abortConnection()  # RST_STREAM for this stream alone
        else:
            request.loseConnection()  # what is buffered is sent first
        return
    for name in COMPLAINTS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    _cut.set(True)
