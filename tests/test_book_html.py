"""The rendered book in a real headless browser (Debian's Chromium, driven by Playwright).

Every page of ``_toc.yml`` must load from a local web server, show its figures (each ``<img>``
decoded with a non-zero size, and at least one figure on every chapter that plots), and contain
no error output: no traceback, no stderr block, no JavaScript exception. One full-page screenshot
per chapter is kept under ``_build/screenshots/`` for review.

Reading checks, on the same pages: every figure has alt text (not the file name Sphinx puts there
by default); no table, figure or image sticks out of the text column (a wide table must scroll in
its own box); every internal link (to a page, a file or an anchor) resolves; and every chapter has
an overview and at least two exercises, each with its solution.

Needs the built book (``make book``, README command 1, which CI runs before the tests) and
``/usr/bin/chromium`` (Debian package ``chromium``; ``.ci/run`` installs it). Without them the test
is skipped on a developer's machine, but fails where ``KN_REQUIRE_BOOK_HTML=1`` (set by ``.ci/run``),
so CI cannot pass without having looked at the pages.
"""

from __future__ import annotations

import functools
import re
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
PAGES_WITHOUT_FIGURES = {"book/intro", "book/references", "book/limitations", "book/variants"}  # tables only
PAGES_WITHOUT_EXERCISES = {"book/references"}  # limitations has exercises too (what would change a verdict)
PAGES_WITHOUT_OVERVIEW = {"book/references", "book/limitations"}  # limitations is one overview
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


# The page's figures with their alt text, and every table/figure/image whose right edge lies beyond
# the article's, unless an ancestor inside the article scrolls horizontally and itself fits.
_READING_JS = """() => {
  const article = document.querySelector('article');
  const limit = article.getBoundingClientRect().right + 2;
  const figures = [...article.querySelectorAll('img')].map(e => [e.getAttribute('src'), e.getAttribute('alt')]);
  const overflowing = [];
  for (const el of article.querySelectorAll('table, figure, img, .cell_output, pre')) {
    if (el.getBoundingClientRect().right <= limit) continue;
    let contained = false;
    for (let a = el.parentElement; a && a !== article; a = a.parentElement) {
      const ox = getComputedStyle(a).overflowX;
      if ((ox === 'auto' || ox === 'scroll' || ox === 'hidden') && a.getBoundingClientRect().right <= limit) { contained = true; break; }
    }
    const ox = getComputedStyle(el).overflowX;
    if (!contained && !((ox === 'auto' || ox === 'scroll') && el.getBoundingClientRect().right <= limit)) {
      overflowing.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + ' ' + Math.round(el.getBoundingClientRect().width) + 'px');
    }
  }
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  return {figures, overflowing, pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth, links,
          exercises: article.querySelectorAll('.exercise').length, solutions: article.querySelectorAll('.solution').length,
          overview: [...article.querySelectorAll('h1, h2')].some(h => /overview/i.test(h.textContent))
                    || /you will learn|run time/i.test(article.innerText)};
}"""


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset[str]:
    import re

    return frozenset(re.findall(r'(?:id|name)="([^"]+)"', path.read_text(errors="replace")))


def _unresolved(site: str, links: list[str]) -> list[str]:
    """Links into the site whose file is missing from the build, or whose #anchor is not on the page."""
    from urllib.parse import unquote, urlsplit

    bad = []
    for link in dict.fromkeys(links):
        if not link.startswith(site + "/"):
            continue  # external, mailto:, javascript:
        parts = urlsplit(link)
        target = HTML / unquote(parts.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            bad.append(link)
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _anchors(target):
            bad.append(link)
    return bad


@pytest.mark.parametrize("page", toc_pages())
def test_page_reads_well(site, browser, page):
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    response = tab.goto(f"{site}/{page}.html", wait_until="load")
    assert response is not None and response.status == 200
    tab.wait_for_load_state("networkidle")
    found = tab.evaluate(_READING_JS)
    tab.close()

    no_alt = [src for src, alt in found["figures"]
              if not (alt or "").strip() or alt.strip() == src or alt.strip().lower().endswith((".png", ".svg", ".jpg", ".jpeg"))]
    assert not no_alt, f"{page}: figures without alt text: {no_alt}"
    assert not found["overflowing"], f"{page}: sticks out of the text column: {found['overflowing']}"
    assert found["pageWidth"] <= found["viewport"], f"{page}: the page scrolls sideways ({found['pageWidth']} px)"
    bad = _unresolved(site, found["links"])
    assert not bad, f"{page}: internal links that do not resolve: {bad}"
    if page not in PAGES_WITHOUT_OVERVIEW:
        assert found["overview"], f"{page}: no overview"
    if page not in PAGES_WITHOUT_EXERCISES:
        assert found["exercises"] >= 2, f"{page}: {found['exercises']} exercises (at least 2)"
        assert found["solutions"] >= found["exercises"], f"{page}: {found['solutions']} solutions for {found['exercises']} exercises"


# -- tables that look finished, math that renders offline -------------------------------------------------

MAX_TABLE_COLUMNS = 7
_BAD_CELL = {
    "missing value shown": re.compile(r"^(nan|NaN|None|<NA>|NaT)$"),
    "scientific notation": re.compile(r"\d(\.\d+)?e[+-]?\d+\b"),
    "cut with an ellipsis": re.compile(r"(\.\.\.|…)$"),
}
# Every table in a page's article: its widest row's cell count, whether it scrolls sideways, and the text of
# each cell (what a reader sees: visible text, trimmed).
_TABLES_JS = """() => [...document.querySelectorAll('article table')].map(t => ({
  columns: Math.max(0, ...[...t.rows].map(r => [...r.cells].filter(c => c.offsetParent !== null || c.getClientRects().length)
                                               .reduce((n, c) => n + (c.colSpan || 1), 0))),
  scrolls: t.scrollWidth > t.clientWidth + 2 || (t.parentElement && t.parentElement.scrollWidth > t.parentElement.clientWidth + 2),
  cells: [...t.querySelectorAll('td, th')].filter(c => c.getClientRects().length).map(c => c.innerText.trim()),
}))"""


def table_problems(tables: list[dict], max_columns: int = MAX_TABLE_COLUMNS) -> list[str]:
    """What a reader would see wrong in a page's tables (``_TABLES_JS``'s records): more than
    ``max_columns`` columns, a table that scrolls sideways, and cells that show a missing value as
    NaN/None, a number in scientific notation, or a text cut with "..."."""
    problems = []
    for i, table in enumerate(tables, 1):
        if table["columns"] > max_columns:
            problems.append(f"table {i}: {table['columns']} columns (at most {max_columns})")
        if table["scrolls"]:
            problems.append(f"table {i}: scrolls sideways")
        for cell in table["cells"]:
            for what, pattern in _BAD_CELL.items():
                if pattern.search(cell):
                    problems.append(f"table {i}: {what}: {cell[:80]!r}")
    return problems


def test_table_problems_on_planted_tables():
    good = {"columns": 7, "scrolls": False, "cells": ["claim", "−64.6% [−81.0, −38.1]", "—", "✓", "1,764,445,000", "P19"]}
    assert table_problems([good]) == []
    planted = [{"columns": 8, "scrolls": True, "cells": ["NaN", "None", "1.764445e+09", "2e-05", "localization adds at most ..."]}]
    found = table_problems(planted)
    assert any("8 columns" in p for p in found) and any("scrolls sideways" in p for p in found)
    for what in ("missing value shown", "scientific notation", "cut with an ellipsis"):
        assert any(what in p for p in found), what
    assert sum("missing value shown" in p for p in found) == 2 and sum("scientific notation" in p for p in found) == 2
    # words that merely contain "e" and a digit, or a "nan" inside a word, are not flagged
    assert table_problems([{"columns": 2, "scrolls": False, "cells": ["gemma3-270m", "nano", "P1e"]}]) == []


def _offline(tab, site: str) -> None:
    """Every request that does not go to the local site fails, as on a course machine without network."""
    tab.route("**/*", lambda route: route.continue_() if route.request.url.startswith(site) else route.abort())


_RAW_TEX_JS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const text = document.querySelector('article').innerText;
  return {mathjax: !!(window.MathJax && MathJax.startup), raw: (text.match(/\\\\\\(|\\\\\\[|\\$\\$/g) || []).length,
          rendered: document.querySelectorAll('article mjx-container').length};
}"""


def test_planted_page_with_raw_tex_is_caught(browser):
    tab = browser.new_page()
    tab.set_content("<html><body><article><p>A fact \\(\\langle h, r, t \\rangle\\) unrendered.</p></article></body></html>")
    found = tab.evaluate(_RAW_TEX_JS)
    tab.close()
    assert found["raw"] == 1 and found["rendered"] == 0  # one opening delimiter


@pytest.mark.parametrize("page", toc_pages())
def test_page_tables_look_finished_and_math_renders_offline(site, browser, page):
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    _offline(tab, site)
    response = tab.goto(f"{site}/{page}.html", wait_until="load")
    assert response is not None and response.status == 200
    tab.wait_for_load_state("networkidle")
    problems = table_problems(tab.evaluate(_TABLES_JS))
    math = tab.evaluate(_RAW_TEX_JS)
    tab.close()
    assert not problems, f"{page}: " + "; ".join(problems[:12]) + (f" (+{len(problems) - 12} more)" if len(problems) > 12 else "")
    assert math["raw"] == 0, f"{page}: {math['raw']} TeX delimiters shown raw with the network off (MathJax: {math['mathjax']})"
