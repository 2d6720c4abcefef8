"""The converted copy of an offline model (``models._load_offline``) is checked against the sha256 recorded
when it was written: a flipped byte or a truncated file is found and the copy rebuilt, with one line
saying so, instead of wrong numbers or a traceback (issue 26, item 1).

The unit tests stand a tiny random LLaMA in for the GGUF file (``models._from_gguf`` is replaced), so
they run in seconds; the integration test damages the real SmolLM2 copy under ``kn attribute``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import MIRROR, run_kn
from kn_lib import model_files, models
from kn_lib.model_registry import tiny_llama

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
TEXT = "alice was born in paris"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An offline model whose "GGUF file" is a stand-in and whose reading builds the tiny LLaMA; returns
    (spec, the list of GGUF reads, the converted-copies folder)."""
    monkeypatch.setenv("KN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KN_NO_MODEL_CACHE", raising=False)
    gguf = tmp_path / "wheel" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"a GGUF file stands here")
    reads = []

    def from_gguf(directory, filename, dtype):
        reads.append(filename)
        adapter = tiny_llama()
        return adapter.model, adapter.tokenizer

    monkeypatch.setattr(models, "_from_gguf", from_gguf)
    spec = models.OfflineModel("a tiny stand-in", lambda: (gguf.parent, gguf.name))
    return spec, reads, tmp_path / "cache" / "converted"


def load(spec):
    """Load through the cache; (logits of TEXT, ModelCacheWarning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tokenizer = models._load_offline("tiny-offline", spec, torch.float32)
    with torch.no_grad():
        logits = model(tokenizer(TEXT, return_tensors="pt").input_ids).logits
    return logits, [str(w.message) for w in caught if issubclass(w.category, models.ModelCacheWarning)]


def the_copy(converted: Path) -> Path:
    copies = [p for p in converted.iterdir() if not p.name.startswith(".")]
    assert len(copies) == 1, copies
    return copies[0]


def test_the_copy_records_a_checksum_of_every_file(offline):
    spec, reads, converted = offline
    expected, told = load(spec)
    folder = the_copy(converted)
    listed = dict(line.split()[::-1] for line in (folder / model_files.CHECKSUMS).read_text().splitlines())
    assert "model.safetensors" in listed and "config.json" in listed
    assert set(listed) == {p.name for p in folder.iterdir()} - {model_files.CHECKSUMS}
    again, told = load(spec)
    assert reads == ["tiny.gguf"] and told == []  # the second load reads the copy, quietly
    assert torch.equal(again, expected)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_damaged_copy_is_rebuilt_with_one_line(offline, damage):
    spec, reads, converted = offline
    expected, _ = load(spec)
    weights = the_copy(converted) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flip a byte":
        data[len(data) - 101] ^= 0xFF  # inside the last tensor's float32 values
    else:
        data = data[: len(data) // 2]
    weights.write_bytes(bytes(data))

    got, told = load(spec)
    assert len(told) == 1 and "\n" not in told[0], told
    assert told[0] == (f"{the_copy(converted)}: cached copy of tiny-offline model.safetensors does not match its recorded "
                       f"sha256 (damaged or truncated); rebuilding it from {spec.locate()[0] / 'tiny.gguf'}")
    assert reads == ["tiny.gguf", "tiny.gguf"]  # read from the source again
    assert torch.equal(got, expected)  # and the numbers are right
    again, told = load(spec)
    assert told == [] and reads == ["tiny.gguf", "tiny.gguf"] and torch.equal(again, expected)  # the rebuilt copy is good
    assert not [p for p in converted.iterdir() if p.name.startswith(".")]  # no damaged or temporary folder left


def test_a_copy_from_before_checksums_is_rebuilt_quietly(offline):
    spec, reads, converted = offline
    expected, _ = load(spec)
    (the_copy(converted) / model_files.CHECKSUMS).unlink()
    got, told = load(spec)
    assert told == [] and reads == ["tiny.gguf", "tiny.gguf"] and torch.equal(got, expected)
    assert (the_copy(converted) / model_files.CHECKSUMS).is_file()


def test_each_file_is_hashed_once_per_process(offline, monkeypatch):
    spec, reads, converted = offline
    load(spec)  # writes the copy: its files were just hashed
    hashed = []
    real = model_files._sha256
    monkeypatch.setattr(model_files, "_sha256", lambda path: hashed.append(path.name) or real(path))
    load(spec)
    load(spec)
    assert hashed == []
    model_files._VERIFIED.clear()  # a new process
    load(spec)
    assert "model.safetensors" in hashed and len(hashed) == len(set(hashed))


@pytest.mark.integration
def test_kn_with_a_damaged_smollm2_copy_rebuilds_it_and_gets_the_same_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KN_NO_MODEL_CACHE", raising=False)
    options = ["attribute", "--model", "smollm2-135m", "--preset", "smoke", "--relations", "P36", "--facts-per-relation", "1",
               "--steps", "2", "--device", "cpu", "--no-progress"]
    code, _, err = run_kn(capsys, *options, "--out", str(tmp_path / "good"))  # reads the GGUF file, writes the copy
    assert code == 0, err
    weights = the_copy(tmp_path / "cache" / "converted") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) - 4001] ^= 0xFF
    weights.write_bytes(bytes(data))
    model_files._VERIFIED.clear()  # as a new process would
    code, _, err = run_kn(capsys, *options, "--out", str(tmp_path / "after"))
    assert code == 0
    lines = [line for line in err.split("\n") if line and "Converting and de-quantizing GGUF tensors" not in line]  # the bar of a long wait stays
    assert len(lines) == 1 and lines[0].startswith("kn: warning: ") and "model.safetensors does not match its recorded sha256" in err
    assert "rebuilding it from" in err
    from kn_lib.run.results import load as load_results

    for table in ("coarse", "prompts"):
        good = load_results("smollm2-135m", "attribute", table, root=tmp_path / "good")
        after = load_results("smollm2-135m", "attribute", table, root=tmp_path / "after")
        pd.testing.assert_frame_equal(after, good)
        assert len(good)
