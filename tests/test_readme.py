"""The README says what the code does: its options table, its set-up commands."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import pytest

from asgi_disconnect import Disconnect, DisconnectMiddleware, Scope

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(not README.is_file(), reason="the README is not beside the tests")


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def options_table() -> dict[str, tuple[str, str, str]]:
    """Each option of the README's table: its type, its default and its meaning, as written."""
    rows = {}
    for line in _section("Options").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        name, kind, default, meaning = (
            cell.strip("`") if i < 3 else cell for i, cell in enumerate(cells)
        )
        rows[name] = (kind, default, meaning)
    return rows


def keyword_options() -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(DisconnectMiddleware.__init__).parameters
    return {n: p for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_the_options_table_names_every_option_in_the_signatures_order() -> None:
    assert list(options_table()) == list(keyword_options())


@pytest.mark.parametrize("name", list(keyword_options()))
def test_each_options_type_and_default_are_the_signatures(name: str) -> None:
    kind, default, _ = options_table()[name]
    parameter = keyword_options()[name]
    assert default == repr(parameter.default)
    hints = typing.get_type_hints(DisconnectMiddleware.__init__)
    written = eval(  # the README's own spelling, read as Python
        kind,
        {"Awaitable": Awaitable, "Callable": Callable, "Iterable": Iterable},
        {"Disconnect": Disconnect, "Scope": Scope},
    )
    if parameter.default is None:
        written = written | None  # the table says "default None" rather than "| None"
    assert written == hints[name]


@pytest.mark.parametrize("name", list(keyword_options()))
def test_each_option_has_its_param_in_the_docstring(name: str) -> None:
    assert f":param {name}:" in (DisconnectMiddleware.__doc__ or "")


def _commands() -> list[str]:
    return re.findall(r"```console\n(.*?)\n```", _section("Try it"), flags=re.S)


def test_the_set_up_commands_start_in_a_virtual_environment_of_their_own() -> None:
    demo, suite = _commands()
    for command in (demo, suite):
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && "), command
    assert demo.endswith("python examples/demo.py")
    assert suite.endswith("python -m coverage report")


def test_ci_runs_the_readmes_test_command() -> None:
    run = ROOT / ".ci" / "run"
    if not run.is_file():
        pytest.skip(".ci/run is not beside the tests")
    _, suite = _commands()
    assert f"bash -c '{suite}'" in run.read_text()
