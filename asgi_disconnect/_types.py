from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# What the middleware hands to the app it wraps: a dict scope and a send that takes any
# mapping, so that both Starlette's signature and Django's (as django-stubs types it) fit.
AppScope = dict[str, Any]
AppSend = Callable[[Mapping[str, Any]], Awaitable[None]]
WrappedApp = Callable[[AppScope, Receive, AppSend], Awaitable[None]]
