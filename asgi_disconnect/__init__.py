"""Stop an ASGI app's work when its HTTP client goes away."""

from ._exchange import Cause, Disconnect, Phase
from ._middleware import DisconnectMiddleware, is_disconnected, time_left, wait_disconnected

__version__ = "0.1.0"

__all__ = [
    "Cause",
    "Disconnect",
    "DisconnectMiddleware",
    "Phase",
    "is_disconnected",
    "time_left",
    "wait_disconnected",
]
