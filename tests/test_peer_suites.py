"""Starlette's, FastAPI's and Django's own test suites give the same results behind the
middleware as bare: it is invisible to a client that stays.

Each suite runs in subprocesses, in its own venv under ``.venvs/`` (see ``peers/suites.py``),
bare, wrapped, and wrapped with every watcher started at once. The suites are started side
by side when the first of these tests runs, one run per core, and each test waits for its
own. A test fails with the list of the tests whose outcome changed, unless
``peers/expected.toml`` explains the change. Not measured by coverage: the middleware runs
in the subprocesses.
"""

from __future__ import annotations

import concurrent.futures
import sys

import pytest
from peers import suites

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def reports(request: pytest.FixtureRequest) -> dict[str, concurrent.futures.Future[suites.Report]]:
    """The comparisons of every suite this session runs, started all at once."""
    names = [
        str(item.callspec.params["name"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_the_suite_gives_the_same_results_behind_the_middleware"
    ]
    return suites.start(names)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="reads the peers' pyproject.toml")
@pytest.mark.parametrize("name", suites.SUITES)
def test_the_suite_gives_the_same_results_behind_the_middleware(
    name: str, reports: dict[str, concurrent.futures.Future[suites.Report]]
) -> None:
    try:
        report = reports[name].result()
    except suites.Unavailable as reason:
        pytest.skip(str(reason))
    print(report.summary())
    assert report.ok, report.explain()
