"""The suite tests the package it was asked to: the source tree, or the installed wheel
(``.ci/wheel`` names it in ``ASGI_DISCONNECT_UNDER_TEST``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import asgi_disconnect
from asgi_disconnect import _types

SOURCE = Path(__file__).resolve().parent.parent / "asgi_disconnect"


def test_the_package_under_test_is_the_one_asked_for() -> None:
    expected = Path(os.environ.get("ASGI_DISCONNECT_UNDER_TEST", SOURCE)).resolve()
    assert Path(asgi_disconnect.__file__).resolve().parent == expected


def test_the_package_is_typed() -> None:
    assert (Path(asgi_disconnect.__file__).parent / "py.typed").is_file()


def test_the_public_names_are_pinned() -> None:
    assert asgi_disconnect.__all__ == [
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
    assert re.fullmatch(r"\d+\.\d+\.\d+", asgi_disconnect.__version__)


def test_the_public_type_aliases_are_the_ones_the_package_uses() -> None:
    # An app typed with them is typed as the middleware sees it: the examples are checked with
    # mypy --strict against these names only.
    for name in ("ASGIApp", "Message", "Receive", "Scope", "Send"):
        assert getattr(asgi_disconnect, name) is getattr(_types, name)


def test_the_examples_need_nothing_private() -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    private = [
        str(path.relative_to(examples))
        for path in examples.rglob("*.py")
        if re.search(r"asgi_disconnect\._|from asgi_disconnect\._", path.read_text())
    ]
    assert private == []
