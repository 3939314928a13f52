"""The private parts of anyio and asyncio that the middleware uses on asyncio, by name.

When an anyio or Python release renames or drops one, this fails naming it, and the
middleware warns at import rather than fail or misbehave in the middle of a request.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest
from anyio._backends import _asyncio as anyio_asyncio

from asgi_disconnect import _asyncio

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


def test_what_is_there_warns_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _asyncio.warn_if_changed()


def test_a_changed_anyio_is_named_in_a_warning() -> None:
    class ChangedScope:  # an anyio that renamed one attribute
        _active = False

    internals: dict[type, tuple[str, ...]] = {ChangedScope: ("_active", "_host_task")}
    assert _asyncio.missing_internals(internals) == [
        f"{__name__}.test_a_changed_anyio_is_named_in_a_warning.<locals>.ChangedScope._host_task"
    ]
    with pytest.warns(RuntimeWarning, match=r"missing: .*ChangedScope\._host_task\): cancelling"):
        _asyncio.warn_if_changed(internals)


def test_a_task_class_in_python_has_what_it_sets_in_init() -> None:
    # asyncio's Task without its C accelerator (PyPy, or CPython built without _asyncio)
    # sets its attributes in __init__, where the class itself does not show them.
    py_task = asyncio.tasks._PyTask  # type: ignore[attr-defined]
    assert _asyncio.missing_internals({py_task: ("_fut_waiter", "_must_cancel")}) == []
    assert _asyncio.missing_internals({py_task: ("_no_such_thing",)}) == [
        "asyncio.tasks.Task._no_such_thing"
    ]
