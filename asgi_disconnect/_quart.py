"""Quart behind the middleware.

Quart reads the request body in a task of its own, which races the handler's, and stops the
handler when it hears the disconnect: cancelling the task the server runs instead would
orphan both. Its body reader is recognised, and is told of the disconnect rather than
cancelled.
"""

from __future__ import annotations

import sys

from ._exchange import LISTENING_READERS


def note_readers() -> None:
    """Note Quart's body reader, if this process serves Quart."""
    # Without importing Quart: a process that serves it has imported it already.
    quart = sys.modules.get("quart.asgi")
    if quart is not None:
        LISTENING_READERS.add(quart.ASGIHTTPConnection.handle_messages.__code__)
