"""The documentation says what the code does, and the site it builds holds together.

The options table of ``docs/options.md`` is the signature's, option by option. The site, built
with ``mkdocs build --strict`` (which fails on a link to a page or an anchor that does not
exist), is served and opened page by page in headless Chromium: each renders its heading, its
images load, and every link between its pages, anchors included, reaches what it names.

The site needs the ``docs`` extra (mkdocs-material, mkdocstrings), the browser Chromium and its
driver (Debian: ``apt-get install chromium chromium-driver``); each part is skipped without
what it needs.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import typing
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin

import pytest

from asgi_disconnect import Disconnect, DisconnectMiddleware, Scope

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason="the docs are not beside the tests")


# -- the options table ------------------------------------------------------------------------


def options_table() -> dict[str, tuple[str, str, str]]:
    """Each option of the table: its type, its default and its meaning, as written."""
    rows = {}
    for line in (DOCS / "options.md").read_text().splitlines():
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
    written = eval(  # the table's own spelling, read as Python
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


# -- the site ---------------------------------------------------------------------------------

PAGES = sorted(path.stem for path in DOCS.glob("*.md"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

# What the browser reads of a page: its title, its first heading, the links on it (resolved by
# the browser), the ids anchors can name, and whether every image loaded.
READ_PAGE = """
return {
  title: document.title,
  heading: (document.querySelector("article h1") || {}).textContent || "",
  links: Array.from(document.querySelectorAll("a[href]"), a => a.href),
  ids: Array.from(document.querySelectorAll("[id]"), element => element.id),
  images: Array.from(document.images, image => image.complete && image.naturalWidth > 0),
};
"""


@dataclass
class Page:
    url: str
    title: str
    heading: str
    links: list[str]
    ids: set[str]
    images: list[bool]


def page_url(base: str, stem: str) -> str:
    return base if stem == "index" else f"{base}{stem}/"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Page]]]:
    """The built site served on 127.0.0.1, and each of its pages as the browser rendered it."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the docs extra)")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("Chromium and chromedriver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from servers import HOST, free_port, process

    built = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(built)],
        cwd=ROOT,
        check=True,
    )
    port = free_port()
    base = f"http://{HOST}:{port}/"
    serve = [sys.executable, "-m", "http.server", "--bind", HOST, "--directory", str(built)]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    with process([*serve, str(port)], built.parent / "serve.log", port):
        driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
        try:
            pages = {}
            for stem in PAGES:
                driver.get(page_url(base, stem))
                read: dict[str, Any] = driver.execute_script(READ_PAGE)
                pages[stem] = Page(
                    driver.current_url,
                    read["title"],
                    read["heading"].strip(),
                    read["links"],
                    set(read["ids"]),
                    read["images"],
                )
            yield base, pages
        finally:
            driver.quit()


def source_heading(stem: str) -> str:
    """The page's own first heading, as written in its Markdown."""
    text = (DOCS / f"{stem}.md").read_text()
    if text.startswith("--8<--"):  # a page that includes a file: the file's heading
        text = (ROOT / text.split('"')[1]).read_text()
    return text.split("\n", 1)[0].removeprefix("# ")


@pytest.mark.servers
@pytest.mark.parametrize("stem", PAGES)
def test_each_page_renders_its_heading_and_images(
    site: tuple[str, dict[str, Page]], stem: str
) -> None:
    base, pages = site
    page = pages[stem]
    assert page.url == page_url(base, stem)
    assert page.title.endswith("asgi-disconnect"), page.title
    assert page.heading.rstrip("¶") == source_heading(stem)
    assert all(page.images), page.images


@pytest.mark.servers
@pytest.mark.parametrize("stem", PAGES)
def test_each_link_between_pages_reaches_what_it_names(
    site: tuple[str, dict[str, Page]], stem: str
) -> None:
    base, pages = site
    by_url = {page.url: page for page in pages.values()}
    broken = []
    for link in pages[stem].links:
        if not link.startswith(base):
            continue  # another site's: not this one's to check
        target, fragment = urldefrag(link)
        if target in by_url:
            if fragment and fragment not in by_url[target].ids:
                broken.append(link)
        else:  # a file of the site (a stylesheet, the search index): it must be served
            with urllib.request.urlopen(urljoin(base, target), timeout=10) as response:
                assert response.status == 200, link
    assert not broken, broken


@pytest.mark.servers
def test_the_api_reference_shows_each_public_name(site: tuple[str, dict[str, Page]]) -> None:
    import enum

    import asgi_disconnect

    _, pages = site
    names = [f"asgi_disconnect.{name}" for name in asgi_disconnect.__all__]
    for name in asgi_disconnect.__all__:  # an enum's members too: each has its docstring
        public = getattr(asgi_disconnect, name)
        if isinstance(public, type) and issubclass(public, enum.Enum):
            names += [f"asgi_disconnect.{name}.{member.name}" for member in public]
    missing = [name for name in names if name not in pages["api"].ids]
    assert not missing, missing
