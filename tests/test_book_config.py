"""The book's configuration: links to the source come from one setting, and never point at a placeholder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _extension():
    spec = importlib.util.spec_from_file_location("repository_buttons", ROOT / "book" / "_ext" / "repository_buttons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _theme_options(url: str) -> dict:
    options = {"launch_buttons": dict(CONFIG["launch_buttons"])}
    if url is not None:
        options["repository_url"] = url
    config = SimpleNamespace(html_theme_options=options)
    _extension()._configure(None, config)
    return config.html_theme_options


def test_no_repository_no_buttons():
    options = _theme_options("")
    assert options["launch_buttons"] == {} and "repository_url" not in options
    assert not options["use_repository_button"] and not options["use_issues_button"]


def test_one_setting_turns_every_source_button_on():
    options = _theme_options("https://example.org/group/kn-book")
    assert options["use_repository_button"] and options["use_issues_button"]
    assert options["launch_buttons"]["binderhub_url"]


def test_config_names_no_placeholder_repository():
    url = CONFIG["repository"]["url"]
    assert url == "" or "kn-book/kn-book" not in url, "the placeholder repository must not be linked"
    cff = (ROOT / "CITATION.cff").read_text()
    assert "github.com/kn-book/kn-book" not in cff
    assert not {"use_repository_button", "use_issues_button"} & set(CONFIG["html"]), "set by repository.url alone"


def test_footer_and_logo():
    assert CONFIG["copyright"] and "licence" in CONFIG["html"]["extra_footer"].lower()
    assert (ROOT / CONFIG["logo"]).is_file() and (ROOT / CONFIG["html"]["favicon"]).is_file()
