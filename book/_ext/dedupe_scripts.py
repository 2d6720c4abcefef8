"""Drop duplicate <script> entries from every HTML page.

sphinx-thebe 0.3.1 adds its configuration script (``const THEBE_JS_URL = ...``) each time Sphinx
reads the documents; when a build reads them twice (as this book's does), every page declares the
constant twice and the browser raises "Identifier 'THEBE_JS_URL' has already been declared".
``tests/test_book_html.py`` catches JavaScript errors like this one in headless Chromium.
"""

from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        # an inline script's filename is None when added, "" once the environment was pickled
        key = (str(getattr(script, "filename", script) or ""), repr(sorted(getattr(script, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    scripts[:] = kept


def setup(app):
    # early: Sphinx emits html-page-context with emit_firstresult, so a later handler may never run
    app.connect("html-page-context", _dedupe, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
