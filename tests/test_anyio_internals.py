"""The private parts of anyio and asyncio that the middleware uses on asyncio, by name.

When an anyio or Python release renames or drops one, this fails naming it, and the
middleware warns at import and takes its portable path (``_portable.py``, public API only)
rather than fail or misbehave in the middle of a request.
"""

from __future__ import annotations

import asyncio
import sys
import warnings

import portable
import pytest
from anyio._backends import _asyncio as anyio_asyncio

from asgi_disconnect import _asyncio, _middleware, _portable

EXPECTED = {
    "CancelScope": [
        "_active",
        "_cancel_called",
        "_cancel_handle",
        "_cancel_reason",
        "_cancelled_caught",
        "_cancelling_at_enter",
        "_child_scopes",
        "_deadline",
        "_deliver_cancellation",
        "_host_task",
        "_parent_cancellation_is_visible_to_us",
        "_parent_scope",
        "_pending_uncancellations",
        "_restart_cancellation_in_parent",
        "_shield",
        "_tasks",
        "_timeout",
        "_timeout_handle",
    ],
    "TaskState": ["cancel_scope"],
    "Task": ["_fut_waiter", "_must_cancel"],
}


def test_every_private_attribute_used_is_named_and_there() -> None:
    assert {cls.__name__: list(names) for cls, names in _asyncio.INTERNALS.items()} == EXPECTED
    assert _asyncio.INTERNALS.keys() == {
        anyio_asyncio.CancelScope,
        anyio_asyncio.TaskState,
        asyncio.Task,
    }
    for cls, names in _asyncio.INTERNALS.items():
        for name in names:
            assert hasattr(cls, name), f"{cls.__qualname__}.{name}"
    assert _asyncio.missing_internals() == []


def test_what_is_there_takes_the_fast_path_and_warns_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _portable.asyncio_ticker_class() is _asyncio.AsyncioTicker


def test_a_changed_anyio_is_named_in_a_warning_and_takes_the_portable_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class ChangedScope:  # an anyio that renamed one attribute
        _active = False

    internals: dict[type, tuple[str, ...]] = {ChangedScope: ("_active", "_host_task")}
    assert _asyncio.missing_internals(internals) == [
        f"{__name__}.test_a_changed_anyio_is_named_in_a_warning_and_takes_the_portable_path"
        ".<locals>.ChangedScope._host_task"
    ]
    monkeypatch.setattr(_asyncio, "INTERNALS", internals)
    match = r"missing: .*ChangedScope\._host_task\): it falls back"
    with pytest.warns(RuntimeWarning, match=match):
        assert _portable.asyncio_ticker_class() is _portable.PortableTicker


def test_an_anyio_without_a_private_name_takes_the_portable_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An anyio whose asyncio backend no longer has the names imported from it.
    monkeypatch.delattr(anyio_asyncio, "_task_states")
    monkeypatch.delitem(sys.modules, "asgi_disconnect._asyncio")
    with pytest.warns(RuntimeWarning, match=r"missing: cannot import name '_task_states'"):
        assert _portable.asyncio_ticker_class() is _portable.PortableTicker


def test_a_task_class_in_python_has_what_it_sets_in_init() -> None:
    # asyncio's Task without its C accelerator (PyPy, or CPython built without _asyncio)
    # sets its attributes in __init__, where the class itself does not show them.
    py_task = asyncio.tasks._PyTask  # type: ignore[attr-defined]
    assert _asyncio.missing_internals({py_task: ("_fut_waiter", "_must_cancel")}) == []
    assert _asyncio.missing_internals({py_task: ("_no_such_thing",)}) == [
        "asyncio.tasks.Task._no_such_thing"
    ]


def test_the_path_this_run_takes() -> None:
    expected = _portable.PortableTicker if portable.ACTIVE else _asyncio.AsyncioTicker
    assert _middleware._AsyncioTicker is expected
