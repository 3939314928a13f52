"""Run a peer's own test suite bare and behind the middleware, and compare test by test.

The middleware promises to be invisible to a client that stays, so Starlette's, FastAPI's
and Django's own suites must give the same outcome for every test with every app wrapped
(``wrap_apps.py``, ``django_launcher.py``) as bare. Three modes are run:

- ``bare``: nothing wrapped, the reference;
- ``wrapped``: every app behind ``DisconnectMiddleware``;
- ``at-once``: wrapped, and every request given its watcher as it starts (in a test most
  requests end within the tick that would otherwise spare them one).

FastAPI's tests mostly make their ``TestClient`` on the default backend, asyncio, so its suite
runs again with trio as that default; Starlette's parametrize the backend themselves.

A difference fails unless ``expected.toml`` explains it. A test that differs is first run
again, alone, bare and wrapped: a test whose outcome varies bare (a flake) is reported as one,
not as a difference. What is downloaded, built and the bare outcomes (which depend on the
peer's version and its venv, not on this project's code) are kept in ``.venvs/peers``.

``python tests/peers/suites.py [SUITE ...]`` runs the comparison outside pytest.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parent
TESTS = PEERS.parent
ROOT = TESTS.parent
CACHE = ROOT / ".venvs" / "peers"

SUITES = ["starlette", "fastapi", "django-4.2", "django-5.2", "django-6.1"]

WRAP = "ASGI_DISCONNECT_PEERS_WRAP"
WATCH_AT_ONCE = "ASGI_DISCONNECT_WATCH_AT_ONCE"
BACKEND = "ASGI_DISCONNECT_PEERS_BACKEND"
OUTCOMES = "ASGI_DISCONNECT_PEERS_OUTCOMES"
#: ``=1``: run bare again even where its outcomes are kept.
FRESH = "ASGI_DISCONNECT_PEERS_FRESH"
#: How many runs at once; one per core by default.
JOBS = "ASGI_DISCONNECT_PEERS_JOBS"

MODES: dict[str, dict[str, str]] = {
    "bare": {},
    "wrapped": {WRAP: "1"},
    "at-once": {WRAP: "1", WATCH_AT_ONCE: "1"},
}

#: How often a test that differs is run again, alone, in each of the two modes.
RERUNS = 2

#: Each run's timeout (s): a hang behind the middleware must fail, not stall CI.
TIMEOUT = 900

#: Requirements of the peers' test dependency groups that their tests never import: linters,
#: type checkers and output or parallelism plugins, left out to keep the venv small.
TOOLING = {"mypy", "ty", "ruff", "twine", "types-pyyaml", "pytest-sugar", "pytest-cov"}

#: Optional dependencies whose absence only skips tests (FastAPI's orjson and ujson responses).
EXTRAS = ["orjson", "ujson"]

Outcomes = dict[str, dict[str, str]]

#: What the plugin and the launcher print at the end of a wrapped run.
WRAPPED = r"asgi-disconnect peers: [1-9]\d* apps wrapped"

#: The files that make a run what it is, bare too.
HARNESS = ["record_outcomes.py", "wrap_apps.py", "django_launcher.py"]


class Unavailable(Exception):
    """A suite that cannot run here (no Python new enough for its Django)."""


# -- where each suite runs ---------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    name: str
    project: str  # its name on PyPI
    version: str  # installed where it runs
    python: Path  # the interpreter that runs it
    #: The default backends its ``TestClient`` runs on ("" leaves the suite's own).
    backends: tuple[str, ...] = ("",)
    #: What the suite's own runner is given besides the tests to run.
    arguments: tuple[str, ...] = ()

    @property
    def is_django(self) -> bool:
        return self.project == "django"

    def command(self, source: Path, outcomes: Path, tests: Sequence[str]) -> list[str]:
        if self.is_django:
            launcher = str(PEERS / "django_launcher.py")
            labels = list(tests) or ["asgi"]
            tests_dir = str(source / "tests")
            return [str(self.python), launcher, tests_dir, str(outcomes), *labels, "--parallel=1"]
        plugins = ["-p", "record_outcomes", "-p", "wrap_apps", "-p", "no:cacheprovider"]
        # A module that fails to import is an outcome (error) to compare, not a stop.
        options = ["-q", "--continue-on-collection-errors", *self.arguments]
        return [str(self.python), "-m", "pytest", *plugins, *options, *tests]


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _jobs() -> int:
    return int(os.environ.get(JOBS) or min(2, os.cpu_count() or 1))


#: The suites run side by side, each run (and each pip install) holding one of these while
#: it works, so that the cores stay busy and no more than one run works per core.
_slots = threading.Semaphore(_jobs())


def _run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    with _slots:
        return subprocess.run(command, text=True, **options)


def _pip(python: Path, *arguments: str) -> None:
    _run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *arguments],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )


def _installed_version(python: Path, project: str) -> str:
    script = f"import importlib.metadata as m; print(m.version({project!r}))"
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True)
    return result.stdout.strip()


def _version_here(project: str) -> str:
    return importlib.metadata.version(project)


def suite(name: str) -> Suite:
    """The suite, with what runs it made ready (its venv, possibly made now)."""
    if name in {"starlette", "fastapi"}:
        python = peers_venv()
        if name == "starlette":
            # No timeout of its own: pytest-timeout's, so that a hang fails its test.
            return Suite(name, name, _version_here(name), python, arguments=("--timeout=60",))
        # The docs' tutorials (tests/test_tutorial) are left out: a quarter of the suite,
        # they test the docs' examples, which the rest of the suite covers feature by feature.
        arguments = ("--ignore=tests/test_tutorial",)
        return Suite(name, name, _version_here(name), python, ("", "trio"), arguments)
    if name == "django-5.2":
        python = Path(sys.executable)
        version = _version_here("django")
        if not version.startswith("5.2."):
            raise Unavailable(f"the environment has Django {version}, not 5.2")
        return Suite(name, "django", version, python)
    if name in {"django-4.2", "django-6.1"}:
        # The venvs of test_django_versions.py, made there if not yet.
        from test_django_versions import VERSIONS, find_python, venv_for

        series = name.removeprefix("django-")
        at_least = dict(VERSIONS)[series]
        interpreter = find_python(at_least)
        if interpreter is None:
            raise Unavailable(f"Django {series} needs Python >= {at_least[0]}.{at_least[1]}")
        python = _venv_python(venv_for(series, interpreter))
        return Suite(name, "django", _installed_version(python, "django"), python)
    raise ValueError(f"no such suite: {name!r} (one of {', '.join(SUITES)})")


def _dependency_group(pyproject: dict[str, Any], name: str) -> list[str]:
    """A PEP 735 dependency group, its included groups expanded."""
    requirements: list[str] = []
    for entry in pyproject["dependency-groups"][name]:
        if isinstance(entry, dict):
            requirements += _dependency_group(pyproject, entry["include-group"])
        else:
            requirements.append(entry)
    return requirements


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[._-]+", "-", match.group()).lower()


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib.loads(path.read_text())
    raise Unavailable("the peer suites are read with tomllib, new in Python 3.11")


_peers_venv_lock = threading.Lock()


def peers_venv() -> Path:
    with _peers_venv_lock:  # Starlette's suite and FastAPI's, side by side
        return _peers_venv()


def _peers_venv() -> Path:
    """``.venvs/peers-3.X``: Starlette and FastAPI at this environment's versions, with their
    test dependencies. Not this environment itself: those pin pytest below 9.2 and httpx below
    0.29 (``pip install --dry-run`` here would downgrade both), and add some thirty packages.
    """
    versions = {name: _version_here(name) for name in ["starlette", "fastapi", "anyio", "trio"]}
    sources = {
        name: source(name, versions[name], Path(sys.executable))
        for name in ["starlette", "fastapi"]
    }
    requirements = [
        f"starlette[full]=={versions['starlette']}",
        f"fastapi[all]=={versions['fastapi']}",
        f"anyio=={versions['anyio']}",
        f"trio=={versions['trio']}",
        *EXTRAS,
    ]
    groups = [("starlette", "dev"), ("fastapi", "tests")]
    for project, group in groups:
        pyproject = _load_toml(sources[project] / "pyproject.toml")
        for requirement in _dependency_group(pyproject, group):
            name = _requirement_name(requirement)
            if name not in TOOLING | {"starlette", "fastapi", "anyio", "trio"}:
                requirements.append(requirement)
    requirements = sorted(set(requirements))
    venv = ROOT / ".venvs" / f"peers-{sys.version_info[0]}.{sys.version_info[1]}"
    ready = venv / "ready"
    wanted = "\n".join(requirements) + "\n"
    if not ready.exists() or ready.read_text() != wanted:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT)
        python = _venv_python(venv)
        _pip(python, "install", "--quiet", *requirements)
        _pip(python, "install", "--quiet", "--no-deps", "-e", str(ROOT))
        ready.write_text(wanted)
    return _venv_python(venv)


def source(project: str, version: str, python: Path) -> Path:
    """The peer's sdist, unpacked without its package (the tests import the installed one).

    Downloaded with the pip of the Python that runs it: Django 6.1's sdist is found only by
    a Python >= 3.12."""
    unpacked = CACHE / "src" / f"{project}-{version}"
    if (unpacked / "ready").exists():
        return unpacked
    shutil.rmtree(unpacked, ignore_errors=True)
    (CACHE / "src").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE / "src") as download:
        _pip(
            python, "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            f"{project}=={version}", "--dest", download,
        )  # fmt: skip
        (sdist,) = Path(download).glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            top = f"{archive.getnames()[0].split('/')[0]}/"
            package = f"{top}{project}/"
            members = []
            for member in archive.getmembers():
                if member.name.startswith(top) and not member.name.startswith(package):
                    member.name = member.name.removeprefix(top)
                    members.append(member)
            if not any(member.name.startswith("tests/") for member in members):
                raise RuntimeError(f"the sdist of {project} {version} ships no tests/")
            if hasattr(tarfile, "data_filter"):
                archive.extractall(unpacked, members=members, filter="data")
            else:  # Python < 3.11.4 (Debian 12's 3.11.2): the data filter's main rule by hand
                for member in members:
                    if member.name.startswith("/") or ".." in member.name.split("/"):
                        raise RuntimeError(
                            f"the sdist of {project} has an unsafe path: {member.name}"
                        )
                archive.extractall(unpacked, members=members)
    (unpacked / "ready").touch()
    return unpacked


# -- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    mode: str
    backend: str  # "" for the suite's own

    def __str__(self) -> str:
        if self.backend:
            return f"{self.mode} (TestClient's default backend {self.backend})"
        return self.mode


@dataclass
class Result:
    outcomes: Outcomes
    seconds: float
    cached: bool = False


def _environment(run: Run, outcomes: Path) -> dict[str, str]:
    # Nothing of this project's own run leaks in (its ASGI_DISCONNECT_WATCH_AT_ONCE would
    # change the bare run; PYTEST_ADDOPTS would change the peers' options; the
    # DJANGO_SETTINGS_MODULE its Django tests set would replace Django's own test settings).
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ASGI_DISCONNECT_", "PYTEST_", "COVERAGE_", "PYTHON", "DJANGO_"))
    }
    environment.update(MODES[run.mode])
    environment[OUTCOMES] = str(outcomes)
    environment["PYTHONPATH"] = str(PEERS)
    if run.backend:
        environment[BACKEND] = run.backend
    return environment


def run_suite(suite: Suite, source: Path, run: Run, tests: Sequence[str] = ()) -> Result:
    """One run of the suite (or of some of its tests), its outcomes test by test."""
    with tempfile.TemporaryDirectory() as scratch:
        outcomes = Path(scratch) / "outcomes.json"
        start = time.monotonic()
        result = _run(
            suite.command(source, outcomes, tests),
            cwd=source,
            env=_environment(run, outcomes),
            capture_output=True,
            timeout=TIMEOUT,
        )
        seconds = time.monotonic() - start
        output = f"$ {' '.join(result.args)}\n{result.stdout[-5000:]}{result.stderr[-5000:]}"
        # pytest: 0 all passed, 1 some failed. Django's runtests.py: 0 or 1 likewise.
        if result.returncode not in {0, 1} or not outcomes.exists():
            raise RuntimeError(f"{suite.name} {run}: exit {result.returncode}\n{output}")
        if run.mode != "bare" and not re.search(WRAPPED, output):
            raise RuntimeError(f"{suite.name} {run} wrapped no app:\n{output}")
        found: Outcomes = json.loads(outcomes.read_text())
        return Result(found, seconds)


def _fingerprint(suite: Suite) -> str:
    """What bare outcomes depend on: the peer's version, everything installed beside it and
    how it is run (this harness's plugins and launcher), not the middleware."""
    freeze = subprocess.run(
        [str(suite.python), "-m", "pip", "freeze", "--all", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    harness = [(PEERS / name).read_text() for name in HARNESS]
    key = "\n".join([suite.name, suite.version, repr(suite.arguments), freeze, *harness])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _in_parallel(tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    """Each task's result, the tasks run side by side (their subprocesses take the slots)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = [pool.submit(task) for task in tasks]
        return [future.result() for future in futures]


# -- comparing -------------------------------------------------------------------------------


@dataclass
class Difference:
    suite: str
    run: Run
    test: str
    bare: list[str]  # the outcomes seen bare, the first run's first
    wrapped: list[str]
    detail: str  # the traceback's end, from a wrapped run that failed

    def describe(self) -> str:
        lines = [
            f"{self.suite} {self.run}: {self.test}",
            f"  bare: {', '.join(self.bare)}; {self.run.mode}: {', '.join(self.wrapped)}",
        ]
        lines += [f"  | {line}" for line in self.detail.splitlines()[-15:]]
        return "\n".join(lines)


@dataclass
class Expected:
    reason: str
    suites: list[str]  # fnmatch patterns
    modes: list[str]
    bare: str
    wrapped: str
    match: str  # a regular expression the wrapped run's failure must contain
    tests: list[str]
    seen: set[tuple[str, str]] = field(default_factory=set)  # (test, mode)

    def explains(self, difference: Difference) -> bool:
        return (
            any(fnmatch.fnmatchcase(difference.suite, pattern) for pattern in self.suites)
            and difference.run.mode in self.modes
            and difference.test in self.tests
            and set(difference.bare) == {self.bare}
            and set(difference.wrapped) == {self.wrapped}
            and re.search(self.match, difference.detail) is not None
        )


def expected_differences() -> list[Expected]:
    document = _load_toml(PEERS / "expected.toml")
    return [Expected(**entry) for entry in document["expected"]]


@dataclass
class Report:
    suite: str
    version: str
    #: (run, seconds, kept from an earlier run)
    times: list[tuple[str, float, bool]] = field(default_factory=list)
    setup_seconds: float = 0.0
    seconds: float = 0.0  # from start to report, setup included
    counts: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)  # unexplained
    explained: list[Difference] = field(default_factory=list)
    flakes: list[str] = field(default_factory=list)
    unseen: list[str] = field(default_factory=list)  # expected differences that did not occur

    @property
    def ok(self) -> bool:
        return not self.differences and not self.unseen

    def summary(self) -> str:
        lines = [
            f"{self.suite} {self.version}: {self.seconds:.0f} s in all,"
            f" setup (venv, sdist) {self.setup_seconds:.0f} s"
        ]
        for run, seconds, cached in self.times:
            kept = " (bare outcomes kept from an earlier run)" if cached else ""
            lines.append(f"  {run}: {self.counts.get(run, 0)} tests, {seconds:.0f} s{kept}")
        lines += [f"  flaky bare, run again: {flake}" for flake in self.flakes]
        lines += [f"  expected: {d.test} ({d.run})" for d in self.explained]
        return "\n".join(lines)

    def explain(self) -> str:
        parts = [f"{len(self.differences)} unexplained difference(s) from the bare run:"]
        parts += [difference.describe() for difference in self.differences]
        parts += [f"listed in expected.toml, but did not differ: {test}" for test in self.unseen]
        return "\n\n".join(parts)


def _differing(bare: Outcomes, wrapped: Outcomes) -> list[str]:
    missing = {"outcome": "not run", "detail": ""}
    tests = sorted(set(bare) | set(wrapped))
    return [
        test
        for test in tests
        if bare.get(test, missing)["outcome"] != wrapped.get(test, missing)["outcome"]
    ]


def _difference(
    suite: str, run: Run, test: str, bare: list[Outcomes], wrapped: list[Outcomes]
) -> Difference:
    def outcome(outcomes: Outcomes) -> str:
        return outcomes[test]["outcome"] if test in outcomes else "not run"

    details = [o[test]["detail"] for o in wrapped if o.get(test, {}).get("detail")]
    return Difference(
        suite, run, test, [outcome(o) for o in bare], [outcome(o) for o in wrapped],
        (details or [""])[0],
    )  # fmt: skip


def compare(name: str, log: Callable[[str], None] = lambda line: None) -> Report:
    """Run the suite in every mode and compare each wrapped mode with the bare one."""
    started = time.monotonic()
    peer = suite(name)
    tree = source(peer.project, peer.version, peer.python)
    report = Report(name, peer.version, setup_seconds=time.monotonic() - started)
    log(f"{name} {peer.version}: ready in {report.setup_seconds:.0f} s")

    runs = [Run(mode, backend) for backend in peer.backends for mode in MODES]
    kept = CACHE / "bare" / f"{name}-{peer.version}-{_fingerprint(peer)}"

    def one(run: Run) -> Result:
        cache = kept / f"{run.backend or 'own'}.json"
        if run.mode == "bare" and cache.exists() and os.environ.get(FRESH) != "1":
            return Result(json.loads(cache.read_text()), 0.0, cached=True)
        result = run_suite(peer, tree, run)
        if run.mode == "bare":
            kept.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(result.outcomes))
        log(f"{name} {run}: {len(result.outcomes)} tests in {result.seconds:.0f} s")
        return result

    results = dict(
        zip(runs, _in_parallel([functools.partial(one, run) for run in runs]), strict=True)
    )
    for run, result in results.items():
        report.times.append((str(run), result.seconds, result.cached))
        report.counts[str(run)] = len(result.outcomes)

    expected = expected_differences()
    for run in runs:
        if run.mode == "bare":
            continue
        bare = results[Run("bare", run.backend)].outcomes
        wrapped = results[run].outcomes
        tests = []
        for test in _differing(bare, wrapped):
            difference = _difference(name, run, test, [bare], [wrapped])
            explanation = next((e for e in expected if e.explains(difference)), None)
            if explanation is None:
                tests.append(test)
            else:
                explanation.seen.add((test, run.mode))
                report.explained.append(difference)
        if not tests:
            continue
        # What differs unexplained runs again, alone, both ways, to tell a flake from a defect.
        log(f"{name} {run}: {len(tests)} differ; running them again")
        bare_runs, wrapped_runs = [bare], [wrapped]
        again = [Run("bare", run.backend), run] * RERUNS
        rerun = _in_parallel([functools.partial(run_suite, peer, tree, r, tests) for r in again])
        for each, result in zip(again, rerun, strict=True):
            (bare_runs if each.mode == "bare" else wrapped_runs).append(result.outcomes)
        for test in tests:
            difference = _difference(name, run, test, bare_runs, wrapped_runs)
            if set(difference.wrapped) <= set(difference.bare):
                report.flakes.append(f"{test} ({run}): bare {', '.join(difference.bare)}")
            else:
                report.differences.append(difference)

    modes = {run.mode for run in runs}
    for entry in expected:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in entry.suites):
            for test in entry.tests:
                for mode in set(entry.modes) & modes:
                    if (test, mode) not in entry.seen and _applies(test, results):
                        report.unseen.append(f"{test} ({mode})")
    report.seconds = time.monotonic() - started
    log(f"{name}: compared in {report.seconds:.0f} s")
    return report


def _applies(test: str, results: dict[Run, Result]) -> bool:
    """Whether the suite has that test at all (each Django version has its own)."""
    return any(test in result.outcomes for result in results.values())


#: The order in which the suites are started: the longest first, so that it never runs alone.
LONGEST_FIRST = ["fastapi", "starlette", "django-6.1", "django-5.2", "django-4.2"]


def start(
    names: Iterable[str], log: Callable[[str], None] = lambda line: None
) -> dict[str, concurrent.futures.Future[Report]]:
    """Start comparing the suites, side by side; each future holds its report (or raises
    ``Unavailable``). The threads only wait: the work is in subprocesses that take slots."""
    wanted = set(names)
    unknown = wanted - set(SUITES)
    if unknown:
        raise ValueError(f"no such suite: {', '.join(sorted(unknown))} (of {', '.join(SUITES)})")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(len(wanted), 1))
    futures = {name: pool.submit(compare, name, log) for name in LONGEST_FIRST if name in wanted}
    pool.shutdown(wait=False)
    return futures


def main(arguments: list[str]) -> int:
    sys.path.insert(0, str(TESTS))  # for test_django_versions' venvs
    started = time.monotonic()
    failed = False
    futures = start(arguments or SUITES, log=lambda line: print(line, flush=True))
    for name in arguments or SUITES:
        try:
            report = futures[name].result()
        except Unavailable as reason:
            print(f"{name}: skipped: {reason}")
            continue
        print(report.summary())
        if not report.ok:
            failed = True
            print(report.explain())
    print(f"all in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
