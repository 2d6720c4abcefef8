"""``make lab`` starts JupyterLab, also as root (most containers: it adds ``--allow-root`` only then), and
serves a chapter as a notebook (jupytext opens the MyST .md). The lab extra is installed by ``make lab``,
not by ``make install``: without jupyterlab in this interpreter's environment the test is skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("jupyterlab", reason="the lab extra is not installed (`make lab` installs it)")
pytest.importorskip("jupytext", reason="the lab extra is not installed (`make lab` installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_starts_headless_and_serves_a_chapter(tmp_path):
    port, token, venv = free_port(), "kn-lab-test", Path(sys.prefix)
    lab_args = f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        # -o: take the environment as installed (this interpreter's), do not rebuild it
        lab = subprocess.Popen(["make", "-o", f"{venv}/.installed", "lab", f"VENV={venv}", f"LAB_ARGS={lab_args}"], cwd=ROOT,
                               stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/contents/intro.md?type=notebook&content=1&token={token}"
    chapter = refused = None
    try:
        deadline = time.time() + 180
        while chapter is None and refused is None and time.time() < deadline and lab.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    chapter = json.load(response)
            except urllib.error.HTTPError as err:  # the server is up and answers no (jupytext not active?)
                refused = f"HTTP {err.code}: {err.read()[:300]!r}"
            except OSError:  # not up yet
                time.sleep(0.5)
    finally:
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGTERM)  # make and the server it started
        lab.wait(timeout=60)
    assert chapter is not None, f"no chapter served ({refused or f'make lab exited {lab.returncode}'}): {log.read_text()[-3000:]}"
    assert chapter["type"] == "notebook" and chapter["name"] == "intro.md"
    cells = chapter["content"]["cells"]
    assert cells and any(cell["cell_type"] == "markdown" and "".join(cell["source"]).lstrip().startswith("# ") for cell in cells)
