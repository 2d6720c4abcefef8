"""The rendered book in a real headless browser (Debian's Chromium, driven by Playwright).

Every page of ``_toc.yml`` must load from a local web server, show its figures (each ``<img>``
decoded with a non-zero size, and at least one figure on every chapter that plots), and contain
no error output: no traceback, no stderr block, no JavaScript exception. One full-page screenshot
per chapter is kept under ``_build/screenshots/`` for review.

Needs the built book (``make book``, README command 1, which CI runs before the tests) and
``/usr/bin/chromium`` (Debian package ``chromium``; ``.ci/run`` installs it). Without them the test
is skipped on a developer's machine, but fails where ``KN_REQUIRE_BOOK_HTML=1`` (set by ``.ci/run``),
so CI cannot pass without having looked at the pages.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("KN_BOOK_HTML", ROOT / "_build" / "html"))  # the built site
SHOTS = HTML.parent / "screenshots"
REQUIRED = os.environ.get("KN_REQUIRE_BOOK_HTML") == "1"
PAGES_WITHOUT_FIGURES = {"book/intro", "book/references"}
ERROR_MARKERS = ("Traceback (most recent call last)", "Error in callback", "ModuleNotFoundError", "NameError:")


def _missing(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (KN_REQUIRE_BOOK_HTML=1)")
    pytest.skip(reason)


def toc_pages() -> list[str]:
    toc = yaml.safe_load(Path(os.environ.get("KN_BOOK_TOC", ROOT / "_toc.yml")).read_text())
    pages = [toc["root"]]
    for entry in toc.get("chapters", []):
        pages.append(entry["file"])
    for part in toc.get("parts", []):
        pages += [entry["file"] for entry in part["chapters"]]
    return pages


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def site():
    if not (HTML / "index.html").exists():
        _missing(f"the book is not built ({HTML} missing): run `make book` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output readable
        pass


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    if executable is None:
        _missing("Chromium is not installed (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright; it drives the system Chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield b
        b.close()


def test_toc_lists_every_chapter():
    pages = toc_pages()
    assert pages[0] == "book/intro" and "book/references" in pages
    for page in pages:
        assert (ROOT / f"{page}.md").exists(), page


@pytest.mark.parametrize("page", toc_pages())
def test_page_renders_with_figures_and_no_errors(site, browser, page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    js_errors: list[str] = []
    tab.on("pageerror", lambda exc: js_errors.append(str(exc)))
    response = tab.goto(f"{site}/{page}.html", wait_until="load")
    assert response is not None and response.status == 200, f"{page}: HTTP {response and response.status}"
    tab.wait_for_load_state("networkidle")

    article = tab.locator("article")
    assert article.count() >= 1, f"{page}: no <article> (not a rendered book page?)"
    text = article.first.inner_text()
    assert len(text) > 200, f"{page}: almost empty ({len(text)} characters)"
    for marker in ERROR_MARKERS:
        assert marker not in text, f"{page}: shows {marker!r}"
    assert tab.locator("article .output.stderr, article .output.traceback, article .output.error").count() == 0, (
        f"{page}: an error or stderr output block is rendered"
    )

    images = tab.eval_on_selector_all(
        "article img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth > 0])"
    )
    broken = [src for src, ok in images if not ok]
    assert not broken, f"{page}: images that did not load: {broken}"
    if page not in PAGES_WITHOUT_FIGURES:
        assert images, f"{page}: a chapter with plots shows no figure"
    assert not js_errors, f"{page}: JavaScript errors {js_errors}"

    tab.screenshot(path=str(SHOTS / f"{Path(page).name}.png"), full_page=True)
    tab.close()
