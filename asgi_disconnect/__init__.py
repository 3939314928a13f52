"""Stop an ASGI app's work when its HTTP client goes away."""

from ._exchange import Disconnect, Phase
from ._middleware import DisconnectMiddleware, is_disconnected, wait_disconnected

__version__ = "0.1.0"

__all__ = [
    "Disconnect",
    "DisconnectMiddleware",
    "Phase",
    "is_disconnected",
    "wait_disconnected",
]
