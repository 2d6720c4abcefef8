"""The converted copy of an offline model (``models._load_offline``) is the GGUF model, bit for bit."""

from __future__ import annotations

import pytest
import torch

from kn_lib import models


@pytest.mark.integration
def test_converted_copy_matches_the_gguf_model(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_CACHE_DIR", str(tmp_path))
    from_gguf = models.load_model("smollm2-135m")  # reads the GGUF file, writes the converted copy
    copies = list((tmp_path / "converted").iterdir())
    assert len(copies) == 1 and (copies[0] / "config.json").is_file()
    from_copy = models.load_model("smollm2-135m")  # reads the copy
    text = "The capital of Ireland is"
    ids = from_gguf.tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(ids, from_copy.tokenizer(text, return_tensors="pt").input_ids)
    assert from_gguf.answer_token("Dublin") == from_copy.answer_token("Dublin")
    with torch.no_grad():
        assert torch.equal(from_gguf.model(ids).logits, from_copy.model(ids).logits)
    assert (from_gguf.n_layers, from_gguf.n_neurons) == (from_copy.n_layers, from_copy.n_neurons)
