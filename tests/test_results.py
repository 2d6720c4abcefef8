"""The results store: cache keys, atomic shards, manifest checksums, stale temporary files, load()."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from kn_lib.run import results
from kn_lib.run import store as store_module
from kn_lib.run.results import CorruptShard, ResultsNotFound, ResultStore, cache_key

SETTINGS = {"model": "m", "ig": {"steps": 20, "rule": "right"}, "threshold": 0.2, "seed": 0}


def frame(n: int, fact: str = "P19/0") -> pd.DataFrame:
    return pd.DataFrame({"fact_id": [fact] * n, "relation": [fact.split("/")[0]] * n, "layer": range(n), "score": [0.5] * n})


@pytest.fixture
def store(tmp_path) -> ResultStore:
    s = ResultStore(tmp_path, "org/model", "attribute", cache_key(SETTINGS))
    s.create(SETTINGS, {"model_description": "a test model"})
    return s


def test_cache_key_is_stable_short_and_order_free():
    reordered = {"seed": 0, "threshold": 0.2, "ig": {"rule": "right", "steps": 20}, "model": "m"}
    assert cache_key(SETTINGS) == cache_key(reordered)
    assert len(cache_key(SETTINGS)) == 12
    assert cache_key(SETTINGS) != cache_key({**SETTINGS, "ig": {"steps": 21, "rule": "right"}})
    assert cache_key(SETTINGS) != cache_key({**SETTINGS, "seed": 1})


def test_shards_round_trip_with_a_manifest(store):
    store.write_shard("P19/chunk-00000", {"coarse": frame(3), "skipped": frame(0)}, {"fact_ids": ["P19/0"]})
    store.write_shard("P36/chunk-00000", {"coarse": frame(2, "P36/4"), "skipped": frame(1, "P36/4")}, {"fact_ids": ["P36/4"]})
    assert store.dir == store.root / "org--model" / "attribute" / cache_key(SETTINGS)
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["settings"] == SETTINGS and manifest["model_description"] == "a test model"
    assert manifest["created_by"]["kn_lib_version"]
    entry = manifest["shards"]["P19/chunk-00000"]
    assert entry["tables"]["coarse"]["path"] == "coarse/P19/chunk-00000.parquet"
    assert entry["tables"]["coarse"]["sha256"] == results.sha256_file(store.dir / "coarse/P19/chunk-00000.parquet")
    assert entry["tables"]["coarse"]["rows"] == 3 and entry["fact_ids"] == ["P19/0"]
    coarse = store.read("coarse")
    assert list(coarse["fact_id"]) == ["P19/0"] * 3 + ["P36/4"] * 2
    assert len(store.read("skipped")) == 1  # an empty shard table does not disturb the types
    assert store.read("skipped")["layer"].dtype == "int64"


def test_truncated_or_missing_shard_fails_its_check(store):
    store.write_shard("a", {"coarse": frame(50)})
    store.write_shard("b", {"coarse": frame(5)})
    path = store.dir / "coarse" / "a.parquet"
    path.write_bytes(path.read_bytes()[:100])
    assert store.check("a") == results.ShardCheck(False, "checksum mismatch: coarse/a.parquet")
    assert store.check("b").ok
    assert store.check("c") == results.ShardCheck(False, "not finished")
    with pytest.raises(CorruptShard, match="shard a: checksum mismatch"):
        store.read("coarse")
    (store.dir / "coarse" / "b.parquet").unlink()
    assert store.check("b").reason == "missing file coarse/b.parquet"


def test_same_key_with_other_settings_is_refused(store):
    with pytest.raises(RuntimeError, match="settings differ"):
        store.create({**SETTINGS, "seed": 7})
    store.create(dict(SETTINGS))  # the same settings: fine, nothing rewritten


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    store_module.write_parquet_atomic(tmp_path / "x" / "t.parquet", frame(2))
    store_module.write_atomic(tmp_path / "m.json", b"{}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.json", "t.parquet", "x"]


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".t.parquet.{store_module._HOST}.{dead}.abc.tmp"
    live = tmp_path / f".t.parquet.{store_module._HOST}.{os.getpid()}.abc.tmp"
    other_host = tmp_path / f".t.parquet.elsewhere.{dead}.abc.tmp"
    for p in (stale, live, other_host):
        p.write_bytes(b"partial")
    assert store_module.remove_stale_temps(tmp_path) == [stale]
    assert live.exists() and other_host.exists()


def test_load_one_call(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_DIR", str(tmp_path))
    assert results.default_root() == tmp_path
    with pytest.raises(ResultsNotFound, match="no refine results"):
        results.load("m", "refine")
    first = ResultStore(tmp_path, "m", "refine", cache_key(SETTINGS))
    first.create(SETTINGS)
    first.write_shard("P19", {"refined": frame(2), "thresholds": frame(1)})
    first.write_shard("P36", {"refined": frame(3, "P36/1"), "thresholds": frame(1, "P36/1")})
    refined = results.load("m", "refine")  # the only key; the stage's main table
    assert len(refined) == 5 and set(refined["relation"]) == {"P19", "P36"}
    assert len(results.load("m", "refine", "thresholds")) == 2
    dataset = results.load("m", "refine", as_dataset=True)
    assert dataset.num_rows == 5 and "fact_id" in dataset.column_names
    assert results.manifest("m", "refine")["key"] == first.key

    other = {**SETTINGS, "seed": 1}
    ResultStore(tmp_path, "m", "refine", cache_key(other)).create(other)
    with pytest.raises(ResultsNotFound, match="2 settings keys"):
        results.load("m", "refine")
    assert len(results.load("m", "refine", key=first.key)) == 5
