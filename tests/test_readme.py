"""The README: its set-up commands, each in a virtual environment of its own, the test command
CI's, and its links into the docs. The docs themselves are checked by ``test_docs.py``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(not README.is_file(), reason="the README is not beside the tests")


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


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


def test_each_link_of_the_readme_names_a_file_and_heading_that_exist() -> None:
    links = re.findall(r"\]\((?!https?:)([^)]+)\)", README.read_text())
    assert any(link.startswith("docs/") for link in links), links
    for link in links:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), link
        if anchor:  # mkdocs' ids: the heading, lower case, its spaces as hyphens
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), flags=re.M)
            ids = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in ids, link
