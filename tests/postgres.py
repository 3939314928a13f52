"""A throwaway PostgreSQL server, from Debian's packages; the tests that need one skip without."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from servers import free_port


def find_postgres() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextmanager
def running_postgres() -> Iterator[int]:
    """Start a server on 127.0.0.1 (user ``postgres``, no password); yield its port."""
    bin_dir = find_postgres()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it from Debian's packages)")
    # Not under pytest's own temporary directory, which only root may enter.
    data = Path(tempfile.mkdtemp(prefix="asgi-disconnect-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
        if runuser is None:
            pytest.skip("running as root without runuser: PostgreSQL cannot be started")
        shutil.chown(data, "postgres", "postgres")
        as_postgres = [runuser, "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            *as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-k", str(data),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import psycopg

        def ready() -> bool:
            try:
                psycopg.connect(host="127.0.0.1", port=port, user="postgres").close()
                return True
            except psycopg.OperationalError:
                return False

        assert wait_for(ready, 30), "PostgreSQL did not start"
        yield port
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(data, ignore_errors=True)
