"""Serve MathJax from the site itself, so that a downloaded copy of the book renders its math offline.

Sphinx loads MathJax 3 from a CDN by default; a site handed out on a course and opened without network
then shows raw TeX (``\\(\\langle h, r, t \\rangle\\)``). MathJax 3.2.2's browser build ships in the PyPI
wheel ``django-static-mathjax`` (Apache-2.0; no Django needed to read its files, install it with the
``book`` extra). At ``builder-inited`` this extension points ``mathjax_path`` at
``_static/mathjax/tex-chtml.js``; when the HTML is written it copies the ``es5`` build there, without the
other combined bundles a page never loads. Without the wheel it leaves the CDN in place and warns, and
``tests/test_book_html.py`` (which loads every page with the network off) fails.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from sphinx.util import logging

LOG = logging.getLogger(__name__)
TARGET = "mathjax"  # under the site's _static
ENTRY = "tex-chtml.js"
UNUSED_BUNDLES = ("tex-chtml-full", "tex-chtml-full-speech", "tex-mml-chtml", "tex-mml-svg", "tex-svg", "tex-svg-full",
                  "mml-chtml", "mml-svg", "node-main")


def mathjax_source() -> Path | None:
    """The ``es5`` directory of the installed MathJax build, or None when the wheel is missing."""
    try:
        root = resources.files("mathjax") / "static" / "mathjax" / "es5"
    except ModuleNotFoundError:
        return None
    path = Path(str(root))
    return path if (path / ENTRY).is_file() else None


def _configure(app) -> None:
    if app.builder.format != "html":
        return
    if mathjax_source() is None:
        LOG.warning("offline_mathjax: django-static-mathjax is not installed; MathJax loads from its CDN "
                    "(pip install 'django-static-mathjax==3.2.2.1')")
        return
    app.config.mathjax_path = f"{TARGET}/{ENTRY}"


def _copy(app, exception) -> None:
    source = mathjax_source()
    if exception is not None or source is None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / TARGET
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=lambda d, names: [n for n in names if Path(d) == source and
                                                              n.removesuffix(".js") in UNUSED_BUNDLES])


def setup(app):
    app.connect("builder-inited", _configure)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
