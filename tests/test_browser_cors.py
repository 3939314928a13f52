"""In headless Chromium, a page on one origin calls an API on another: the middleware's 504
reaches the page as a 504 when CORS sits outside the middleware, as the Quickstart stacks them,
and as a CORS error when it sits inside.

Needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and
selenium; skipped without them.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from servers import HOST, free_port, process

pytestmark = pytest.mark.servers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("Chromium and chromedriver are not installed", allow_module_level=True)

PAGE = """<!doctype html>
<title>page</title>
<script>
async function call(url) {
  try {
    const response = await fetch(url);
    return `status ${response.status}: ${(await response.text()).trim()}`;
  } catch (error) {
    return `error ${error.name}`;
  }
}
</script>
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int]]:
    """A browser on the page's origin, and the port of the API's."""
    from selenium.webdriver.chrome.service import Service

    directory = tmp_path_factory.mktemp("browser")
    (directory / "index.html").write_text(PAGE)
    page_port, api_port = free_port(), free_port()
    page_origin = f"http://{HOST}:{page_port}"
    page = [sys.executable, "-m", "http.server", "--bind", HOST, "--directory", str(directory)]
    api = [
        sys.executable, "-m", "uvicorn", "--host", HOST, "--port", str(api_port),
        "--no-access-log", "served.cors_app:app",
    ]  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    with (
        process([*page, str(page_port)], directory / "page.log", page_port),
        process(api, directory / "api.log", api_port, PAGE_ORIGIN=page_origin),
    ):
        driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
        try:
            driver.set_script_timeout(20)
            driver.get(f"{page_origin}/index.html")
            yield driver, api_port
        finally:
            driver.quit()


def call(browser: tuple[Any, int], path: str) -> str:
    driver, port = browser
    script = "const done = arguments[arguments.length - 1]; call(arguments[0]).then(done);"
    return str(driver.execute_async_script(script, f"http://{HOST}:{port}{path}"))


@pytest.mark.parametrize("path", ["/outside", "/fastapi"])
def test_with_cors_outside_the_page_sees_the_504(browser: tuple[Any, int], path: str) -> None:
    assert call(browser, path) == "status 504: Gateway Timeout"


@pytest.mark.parametrize("path", ["/outside", "/inside", "/fastapi"])
def test_a_response_in_time_reaches_the_page_either_way(
    browser: tuple[Any, int], path: str
) -> None:
    assert call(browser, f"{path}?seconds=0") == "status 200: report"


def test_with_cors_inside_the_page_sees_a_cors_error(browser: tuple[Any, int]) -> None:
    assert call(browser, "/inside") == "error TypeError"
