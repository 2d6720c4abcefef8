"""Repository, issue and launch buttons from one setting, and a downloadable .ipynb on every chapter.

The one setting is ``repository.url`` in ``_config.yml`` (Sphinx: ``html_theme_options["repository_url"]``).

* Set to the book's public repository, it turns on the repository and issue buttons and the launch
  buttons of ``launch_buttons`` (Binder), all pointing at that repository.
* Empty (as long as the project has no public repository), none of them is shown: no button may
  point at a placeholder. ``launch_buttons`` stays in ``_config.yml``, ready for the day a URL is set.

The theme adds the ``.ipynb`` entry of the download menu only as a side effect of its launch buttons;
this extension adds it itself, so that a reader can always download the executed notebook of a
chapter and run it as is (``tests/test_book_html.py`` checks the link).
"""

from __future__ import annotations

import shutil
from pathlib import Path

BUTTONS = ("use_repository_button", "use_issues_button")


def _configure(app, config) -> None:
    options = config.html_theme_options
    url = str(options.get("repository_url") or "").strip()
    if url:
        for button in BUTTONS:
            options.setdefault(button, True)
        return
    options.pop("repository_url", None)
    options["launch_buttons"] = {}  # no repository to launch from
    for button in (*BUTTONS, "use_edit_page_button"):
        options[button] = False


def _add_notebook_download(app, pagename, templatename, context, doctree) -> None:
    if context.get("ipynb_source") or doctree is None:
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():  # not a notebook page
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    app.connect("config-inited", _configure)
    # before the theme's header buttons (priority 501), which build the download menu
    app.connect("html-page-context", _add_notebook_download, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
