"""Stop an ASGI app's work when its HTTP client goes away."""

from ._exchange import Cause, Disconnect, Phase
from ._middleware import (
    DisconnectMiddleware,
    is_disconnected,
    on_stop,
    time_left,
    wait_disconnected,
)
from ._stop import StopHandle
from ._types import ASGIApp, Message, Receive, Scope, Send

__version__ = "0.1.0"

__all__ = [
    "ASGIApp",
    "Cause",
    "Disconnect",
    "DisconnectMiddleware",
    "Message",
    "Phase",
    "Receive",
    "Scope",
    "Send",
    "StopHandle",
    "is_disconnected",
    "on_stop",
    "time_left",
    "wait_disconnected",
]
