"""In headless Chromium, what a page does to leave a request cancels its handler behind the
middleware: closing the tab, navigating away, ``AbortController.abort()`` on a ``fetch``, and
``EventSource.close()``. Over HTTP/1.1 under uvicorn, and over HTTP/2 with TLS under hypercorn
(a self-signed certificate made for the test, which Chromium is told to accept).

The app (``served/browser_app.py``) records on the side channel that its handler started, the
HTTP version it was served over, and that it was cancelled. Each test waits for the handler to
start, leaves, and waits for the cancellation, within generous bounds.

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and
selenium; skipped without them.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from servers import (
    ERROR_LINE,
    HOST,
    LATENCIES,
    Events,
    free_port,
    new_id,
    process,
    write_certificate,
)

pytestmark = pytest.mark.servers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("Chromium and chromedriver are not installed", allow_module_level=True)

#: Seconds from the page leaving a request to its handler's cancellation, at most.
CANCELLED_WITHIN = 5.0
APP = "served.browser_app:app"


@dataclass
class Site:
    driver: Any
    origin: str
    events: Events
    #: What the app records as the request's HTTP version.
    version: str
    #: The name its latencies are reported under.
    name: str

    def run(self, script: str, *args: object) -> Any:
        return self.driver.execute_script(script, *args)

    def until(self, script: str, *args: object, timeout: float = 15.0) -> Any:
        """Wait for ``script`` to return something true, and return it."""
        deadline = time.monotonic() + timeout
        while not (value := self.run(script, *args)):
            assert time.monotonic() < deadline, f"{script!r} still false after {timeout} s"
            time.sleep(0.02)
        return value

    def cancelled(self, rid: str, since: float) -> None:
        """The handler of ``rid`` was cancelled, after ``since`` and within the bound."""
        event, at = self.events.wait(rid, "cancelled", "finished", timeout=CANCELLED_WITHIN)
        assert event == "cancelled"
        assert at >= since
        assert self.version in self.events.of(rid)
        LATENCIES.setdefault(self.name, []).append(at - since)


@pytest.fixture(scope="module", params=["http/1.1", "h2"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """One browser on the page, and the server that serves it over the protocol."""
    from selenium.webdriver.chrome.service import Service

    protocol: str = request.param
    directory = tmp_path_factory.mktemp("browser")
    events = Events(directory / "events")
    port = free_port()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    # Chromium's back/forward cache keeps a page navigated away from alive, frozen, with its
    # fetch still open: the server's handler is then never told, and runs to its end.
    options.add_argument("--disable-features=BackForwardCache")
    if protocol == "h2":
        write_certificate(directory)
        command = [
            sys.executable, "-m", "hypercorn", "--bind", f"{HOST}:{port}", "--worker-class",
            "asyncio", "--certfile", str(directory / "cert.pem"), "--keyfile",
            str(directory / "key.pem"), APP,
        ]  # fmt: skip
        origin, version, next_hop = f"https://{HOST}:{port}", "http-2", "h2"
        options.add_argument("--ignore-certificate-errors")
    else:
        command = [
            sys.executable, "-m", "uvicorn", "--host", HOST, "--port", str(port),
            "--no-access-log", APP,
        ]  # fmt: skip
        origin, version, next_hop = f"http://{HOST}:{port}", "http-1.1", "http/1.1"
    with process(command, directory / "server.log", port, ASGI_DISCONNECT_EVENTS=str(events.path)):
        driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
        try:
            driver.set_page_load_timeout(20)
            driver.set_script_timeout(20)
            driver.get(f"{origin}/")
            # The page itself came over the protocol: the browser says which it used.
            assert driver.execute_script("return protocol()") == next_hop
            yield Site(driver, origin, events, version, f"chromium {protocol}")
        finally:
            driver.quit()
    log = (directory / "server.log").read_text(errors="replace")
    assert not [line for line in log.splitlines() if ERROR_LINE.search(line)], log


def test_closing_the_tab_cancels_the_pending_request(site: Site) -> None:
    rid = new_id("tab")
    first = site.driver.current_window_handle
    site.driver.switch_to.new_window("tab")
    try:
        site.driver.get(f"{site.origin}/")
        site.run("slow(arguments[0])", rid)
        site.events.wait(rid, "started")
    finally:
        since = time.monotonic()
        site.driver.close()
        site.driver.switch_to.window(first)
    site.cancelled(rid, since)


def test_navigating_away_cancels_the_pending_request(site: Site) -> None:
    rid = new_id("away")
    site.run("slow(arguments[0])", rid)
    site.events.wait(rid, "started")
    since = time.monotonic()
    site.driver.get(f"{site.origin}/?away")
    site.cancelled(rid, since)


def test_an_aborted_fetch_cancels_its_request(site: Site) -> None:
    rid = new_id("abort")
    site.run("window.abort = aborted(arguments[0])", rid)
    site.events.wait(rid, "started")
    since = time.monotonic()
    site.run("window.abort()")
    assert site.until("return window.results[arguments[0]] !== 'pending'", rid)
    assert site.run("return window.results[arguments[0]]", rid) == "error AbortError"
    site.cancelled(rid, since)


def test_a_closed_event_source_cancels_its_stream(site: Site) -> None:
    rid = new_id("events")
    site.run("window.source = events(arguments[0])", rid)
    # The stream is flowing: the page has had messages from the handler.
    site.until("return window.results[arguments[0]] >= 2", rid)
    since = time.monotonic()
    site.run("window.source.close()")
    site.cancelled(rid, since)
