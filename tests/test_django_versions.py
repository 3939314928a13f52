"""``test_django.py`` and ``test_django_statements.py`` again, under Django 4.2 and the newest
Django, each in its own venv.

The venvs are made once, in ``.venvs/`` at the top of the repository, and reused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.servers

ROOT = Path(__file__).parent.parent

# (Django, the Python it needs at least)
VERSIONS = [("4.2", (3, 10)), ("6.1", (3, 12))]


def find_python(at_least: tuple[int, int]) -> str | None:
    if sys.version_info >= at_least:
        return sys.executable
    for minor in range(at_least[1], 15):
        candidates = [str(p) for p in Path.home().glob(f".pyenv/versions/3.{minor}*/bin/python")]
        candidates.append(shutil.which(f"python3.{minor}") or "")
        for candidate in candidates:
            # A pyenv shim exists even for a version it cannot run.
            if (
                candidate
                and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0
            ):
                return candidate
    return None


def venv_for(version: str, python: str) -> Path:
    venv = ROOT / ".venvs" / f"django-{version}"
    ready = venv / "ready"
    if not ready.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run(
            [
                *pip, f"django~={version}.0", "pytest>=8", "anyio>=4.16", "uvicorn>=0.30",
                "httptools>=0.6", "psycopg[binary,pool]>=3.1", "channels>=4.1",
                "coverage[toml]>=7.5",
            ],
            check=True,
        )  # fmt: skip
        subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
        ready.touch()
    return venv


@pytest.mark.parametrize(("version", "at_least"), VERSIONS, ids=[v for v, _ in VERSIONS])
def test_the_django_suite_passes_under(version: str, at_least: tuple[int, int]) -> None:
    python = find_python(at_least)
    if python is None:
        pytest.skip(f"Django {version} needs Python >= {at_least[0]}.{at_least[1]}")
    venv = venv_for(version, python)
    command = [str(venv / "bin" / "python"), "-m"]
    if os.environ.get("COVERAGE_RUN"):
        # Measured too: what the middleware does for Django < 5 runs only under it.
        command += ["coverage", "run", f"--rcfile={ROOT / 'pyproject.toml'}", "-m"]
    result = subprocess.run(
        [
            *command,
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            "tests/test_django.py",
            "tests/test_django_statements.py",
        ],
        cwd=ROOT,
        env={**os.environ, "ASGI_DISCONNECT_DJANGO": version},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run by test_django_versions.py" not in result.stdout  # the right Django ran
