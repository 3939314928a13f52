"""Run Django's own ``tests/runtests.py``, every ASGI app its tests serve behind the middleware.

``python django_launcher.py DJANGO_TESTS_DIR OUTCOMES_JSON [runtests.py arguments]``, in a
venv with the Django whose sdist ``DJANGO_TESTS_DIR`` comes from. The environment says what
to change, as for the pytest plugin (``wrap_apps.py``):

- ``ASGI_DISCONNECT_PEERS_WRAP=1``: every app handed to asgiref's ``ApplicationCommunicator``,
  the server of Django's ASGI tests, becomes ``DisconnectMiddleware(app)``. That is where
  every app they build is served (``get_asgi_application()``, ``ASGIHandler`` subclasses,
  ``ASGIStaticFilesHandler``), and only there: the tests that call an ``ASGIHandler``'s
  methods themselves (``read_body()``) serve nothing, and wrapping at the communicator puts
  the middleware outermost, where a server would have it;
- ``ASGI_DISCONNECT_WATCH_AT_ONCE=1``: ``watching.start_watchers_at_once()``.

Each test's outcome (passed, failed, error, skipped, xfailed, xpassed) is written to
``OUTCOMES_JSON`` under its unittest id, as ``record_outcomes.py`` does for pytest.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import runpy
import sys
import traceback
import unittest
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

from asgiref import compatibility, testing

from asgi_disconnect import DisconnectMiddleware

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType]

OUTCOMES: dict[str, dict[str, str]] = {}

#: Added to a failure's detail when the test was handed the 499 that the middleware answers
#: for a client that left before any response was started: ``expected.toml`` matches it.
SAW_499 = "asgi-disconnect peers: the test received a 499 response start"

#: The id of the test running now, and the ids of the tests that received a 499.
_current: list[str] = [""]
_received_499: set[str] = set()

#: How many apps were wrapped: a run that wrapped none compared nothing (suites.py checks).
_wrapped: list[int] = [0]


class RecordingResult(unittest.TextTestResult):
    """unittest's own result, which also notes each test's outcome."""

    def startTest(self, test: unittest.TestCase) -> None:
        _current[0] = test.id()
        super().startTest(test)

    def _note(self, test: unittest.TestCase, outcome: str, err: ExcInfo | None = None) -> None:
        if OUTCOMES.get(test.id(), {}).get("outcome") in {"failed", "error"}:
            return  # a failed subtest, or an error in tearDown after a failure, stays so
        lines = [] if err is None else "".join(traceback.format_exception(err[1])).splitlines()
        lines = lines[-40:]
        if err is not None and test.id() in _received_499:
            lines.append(SAW_499)
        OUTCOMES[test.id()] = {"outcome": outcome, "detail": "\n".join(lines)}

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._note(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:  # type: ignore[override]
        super().addFailure(test, err)
        self._note(test, "failed", err)

    def addError(self, test: unittest.TestCase, err: ExcInfo) -> None:  # type: ignore[override]
        super().addError(test, err)
        self._note(test, "error", err)

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._note(test, "skipped")

    def addExpectedFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:  # type: ignore[override]
        super().addExpectedFailure(test, err)
        self._note(test, "xfailed")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._note(test, "xpassed")

    def addSubTest(
        self,
        test: unittest.TestCase,
        subtest: unittest.TestCase,
        err: ExcInfo | tuple[None, None, None] | None,
    ) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None and err[0] is not None:
            failure = issubclass(err[0], test.failureException)
            self._note(test, "failed" if failure else "error", err)


def wrap_communicated_apps() -> None:
    original = testing.ApplicationCommunicator.__init__

    @functools.wraps(original)
    def __init__(self: testing.ApplicationCommunicator, application: Any, *args: Any) -> None:
        app = compatibility.guarantee_single_callable(application)  # type: ignore[no-untyped-call]
        original(self, DisconnectMiddleware(app), *args)  # type: ignore[no-untyped-call]
        _wrapped[0] += 1

    testing.ApplicationCommunicator.__init__ = __init__  # type: ignore[method-assign]

    receive_output = testing.ApplicationCommunicator.receive_output

    @functools.wraps(receive_output)
    async def noting_499(self: testing.ApplicationCommunicator, timeout: float = 1) -> Any:
        message = await receive_output(self, timeout)  # type: ignore[no-untyped-call]
        if message.get("type") == "http.response.start" and message.get("status") == 499:
            _received_499.add(_current[0])
        return message

    testing.ApplicationCommunicator.receive_output = noting_499  # type: ignore[method-assign]


def start_watchers_at_once() -> None:
    """``watching.start_watchers_at_once()``, loaded from its file (see wrap_apps.py)."""
    spec = importlib.util.spec_from_file_location(
        "watching", Path(__file__).resolve().parent.parent / "watching.py"
    )
    assert spec is not None and spec.loader is not None
    watching = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(watching)
    watching.start_watchers_at_once()


def main() -> None:
    tests_dir, outcomes, *arguments = sys.argv[1:]
    if os.environ.get("ASGI_DISCONNECT_PEERS_WRAP") == "1":
        wrap_communicated_apps()
        atexit.register(lambda: print(f"asgi-disconnect peers: {_wrapped[0]} apps wrapped"))
    if os.environ.get("ASGI_DISCONNECT_WATCH_AT_ONCE") == "1":
        start_watchers_at_once()
    unittest.TextTestRunner.resultclass = RecordingResult  # type: ignore[assignment]
    atexit.register(lambda: Path(outcomes).write_text(json.dumps(OUTCOMES, indent=1)))
    runtests = str(Path(tests_dir) / "runtests.py")
    sys.argv = [runtests, *arguments]
    sys.path[0] = tests_dir  # as when runtests.py is run as a script
    runpy.run_path(runtests, run_name="__main__")


if __name__ == "__main__":
    main()
