"""A pytest plugin that puts every app a test serves through a client behind the middleware.

Loaded with ``-p wrap_apps`` into Starlette's and FastAPI's own test runs. The clients are
Starlette's ``TestClient`` and httpx's (and httpx2's) ``ASGITransport``, which FastAPI's tests
of cancellation and concurrency use. What the plugin does is told by the environment, so that
the bare run loads it too and differs only in that:

- ``ASGI_DISCONNECT_PEERS_WRAP=1``: the app each is given becomes ``DisconnectMiddleware(app)``
  (an ASGI 2 app given to ``TestClient`` is first adapted as ``TestClient`` would, since the
  middleware speaks ASGI 3);
- ``ASGI_DISCONNECT_WATCH_AT_ONCE=1``: every request gets its watcher as it starts
  (``watching.start_watchers_at_once()``), the path most requests in a test never take;
- ``ASGI_DISCONNECT_PEERS_BACKEND=trio``: the backend of a ``TestClient`` made without one, for
  the suites (FastAPI's) whose tests mostly make their clients on the default, asyncio.

Anything else about the clients is left as it is.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette import testclient

from asgi_disconnect import DisconnectMiddleware

WRAP = "ASGI_DISCONNECT_PEERS_WRAP"
BACKEND = "ASGI_DISCONNECT_PEERS_BACKEND"
WATCH_AT_ONCE = "ASGI_DISCONNECT_WATCH_AT_ONCE"

#: How many apps were wrapped: a run that wrapped none compared nothing (suites.py checks).
_wrapped: list[int] = [0]


def _start_watchers_at_once() -> None:
    """``watching.start_watchers_at_once()``, loaded from the file: the peers' runs do not
    have this project's ``tests/`` on their path, whose module names could shadow theirs."""
    spec = importlib.util.spec_from_file_location(
        "watching", Path(__file__).resolve().parent.parent / "watching.py"
    )
    assert spec is not None and spec.loader is not None
    watching = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(watching)
    watching.start_watchers_at_once()


def _wrap(app: Any) -> Any:
    _wrapped[0] += 1
    return DisconnectMiddleware(app)


def _patch(cls: type, change: Callable[[dict[str, Any]], None]) -> None:
    """Have ``cls(...)`` change its arguments (by name) before its own ``__init__`` runs."""
    original = cls.__init__  # type: ignore[misc]
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: object, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        change(bound.arguments)
        original(*bound.args, **bound.kwargs)

    cls.__init__ = __init__  # type: ignore[misc]


def _patch_clients(wrap: bool, backend: str | None) -> None:
    def test_client(arguments: dict[str, Any]) -> None:
        if backend is not None:
            arguments.setdefault("backend", backend)
        if wrap:
            app = arguments["app"]
            if not testclient._is_asgi3(app):
                app = testclient._WrapASGI2(app)
            arguments["app"] = _wrap(app)

    def transport(arguments: dict[str, Any]) -> None:
        arguments["app"] = _wrap(arguments["app"])

    _patch(testclient.TestClient, test_client)
    if wrap:
        for module in ["httpx", "httpx2"]:
            with contextlib.suppress(ModuleNotFoundError):
                _patch(importlib.import_module(module).ASGITransport, transport)


def pytest_configure(config: pytest.Config) -> None:
    wrap = os.environ.get(WRAP) == "1"
    backend = os.environ.get(BACKEND) or None
    if wrap or backend:
        _patch_clients(wrap, backend)
    if os.environ.get(WATCH_AT_ONCE) == "1":
        _start_watchers_at_once()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests whose body runs in a fresh interpreter (FastAPI's
    ``run_in_subprocess``): the patch does not reach there, so they would only compare the
    bare run with itself, at a second each."""
    elsewhere = [item for item in items if _runs_in_subprocess(item)]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]


def _runs_in_subprocess(item: pytest.Item) -> bool:
    function = getattr(item, "obj", None)
    code = getattr(function, "__code__", None)
    return (
        hasattr(function, "__wrapped__")
        and code is not None
        and Path(code.co_filename).name == "_subprocess.py"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if os.environ.get(WRAP) == "1":
        terminalreporter.write_line(f"asgi-disconnect peers: {_wrapped[0]} apps wrapped")


def pytest_report_header() -> list[str]:
    return [
        f"asgi-disconnect peers: wrapped={os.environ.get(WRAP) == '1'}"
        f" watchers-at-once={os.environ.get(WATCH_AT_ONCE) == '1'}"
        f" default-backend={os.environ.get(BACKEND) or 'asyncio'}"
    ]
