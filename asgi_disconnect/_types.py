from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

# The public aliases, for apps that type themselves (re-exported by the package): the shapes
# Starlette's `starlette.types` gives, so that an app typed with them is accepted by both.
Scope = MutableMapping[str, Any]
"""A connection's scope."""
Message = MutableMapping[str, Any]
"""A message from ``receive()`` or to ``send()``."""
Receive = Callable[[], Awaitable[Message]]
"""The server's ``receive``."""
Send = Callable[[Message], Awaitable[None]]
"""The server's ``send``."""
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

# What the middleware hands to the app it wraps: a dict scope, and a send that takes any
# mapping.
AppScope = dict[str, Any]
AppSend = Callable[[Mapping[str, Any]], Awaitable[None]]
# The app it wraps: any ASGI callable. Frameworks type their apps each in their own way
# (Starlette with mappings, django-stubs with a dict scope, Channels' stubs with asgiref's
# typed dicts), and no one signature is accepted by all of them as a parameter type.
WrappedApp = Callable[[Any, Any, Any], Awaitable[None]]
