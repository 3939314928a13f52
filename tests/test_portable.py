"""The suite once more on asyncio's portable path, the one an anyio that has changed the
private parts of its asyncio backend gets (``_portable.py``; see tests/portable.py).

Every test runs but those that hold on the fast path alone (marked ``fast_path``: the single
delivery of the cancellation, and a deadline kept on time.monotonic()'s clock).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import portable
import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.skipif(portable.ACTIVE, reason="this run is the portable path's already")
def test_the_suite_passes_on_the_portable_path() -> None:
    command = [sys.executable, "-m"]
    if os.environ.get("COVERAGE_RUN"):
        # Measured too: the portable path runs only here.
        command += ["coverage", "run", f"--rcfile={ROOT / 'pyproject.toml'}", "-m"]
    result = subprocess.run(
        [
            *command, "pytest", "-p", "no:cacheprovider",
            "-m", "not servers and not fast_path",
            "-k", "not trio",  # trio has no portable path
        ],
        cwd=ROOT,
        env={**os.environ, portable.ENVIRONMENT: "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert "asyncio: the portable path" in result.stdout
