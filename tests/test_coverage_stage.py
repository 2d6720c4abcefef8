"""`kn coverage`: per relation, the facts whose answer is one token, over all the relation's facts."""

from __future__ import annotations

import os

import torch

from conftest import MIRROR
from kn_lib import data
from kn_lib.run import results
from kn_lib.model_registry import load_adapter
from kn_lib.pipeline import target_coverage
from kn_lib.run.runner import run_stage
from kn_lib.run.registry import settings_for, stage_registry

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))


def test_coverage_stage_counts_every_fact_of_each_relation(tmp_path):
    torch.set_num_threads(1)
    settings = settings_for("tiny-random-llama", "smoke", relations="P30,P140", device="cpu")
    assert "coverage" in stage_registry()
    summary = run_stage("coverage", settings, tmp_path, progress=False)
    assert summary.shards_computed == 2
    stored = results.load("tiny-random-llama", "coverage", root=tmp_path).sort_values("relation").reset_index(drop=True)
    expected = target_coverage(load_adapter("tiny-random-llama", "cpu"), data.load_facts(["P140", "P30"]))
    assert stored[["relation", "facts", "single_token"]].values.tolist() == \
        expected.sort_values("relation")[["relation", "facts", "single_token"]].values.tolist()
    assert stored["facts"].sum() == sum(len(data.load_facts([r])) for r in ("P30", "P140"))  # all facts, no sample
    again = run_stage("coverage", settings, tmp_path, progress=False)
    assert again.shards_computed == 0 and again.shards_reused == 2
