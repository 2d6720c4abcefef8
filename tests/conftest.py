"""Tiny randomly initialised models built from configs (no downloads; the ``kn_lib.model_registry`` builders
that ``kn --model tiny-random-*`` uses), and the data mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

MIRROR = Path(os.environ.get("KN_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def run_kn(capsys, *argv: str) -> tuple[int, str, str]:
    """The ``kn`` command in-process: exit status (argparse errors included), stdout, stderr."""
    from kn_lib.run.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one torch thread is fastest, and on a busy machine two threads can be 50x slower.
    Modules that run many tiny models say ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert():
    """A 3-layer BERT with 48 FFN neurons and a word-level vocabulary (``model_registry.TINY_WORDS``), seed 0."""
    from kn_lib.model_registry import tiny_bert

    return tiny_bert()


@pytest.fixture(scope="session")
def tiny_llama():
    """The same as a LLaMA-style causal LM (``model_registry.tiny_llama``)."""
    from kn_lib.model_registry import tiny_llama

    return tiny_llama()


@pytest.fixture(params=["tiny_bert", "tiny_llama"])
def tiny(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "knowledge-neurons" / "BingDistantTREx" / "query_pairs.json").is_file():
        pytest.fail(f"data mirror not found at {MIRROR}; set KN_DATA_MIRROR")
    return MIRROR


@pytest.fixture(scope="session")
def smollm2():
    """The real offline default model (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI), loaded once per run."""
    from kn_lib.models import load_model

    return load_model("smollm2-135m")
