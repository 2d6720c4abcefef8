"""Two runs that meet: each shard is computed once, and a small sample racing a large one loses nothing
(shard claims and the manifest's never-fewer-facts rule, ``kn_lib.run.store``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from conftest import MIRROR
from kn_lib.model_registry import load_adapter
from kn_lib.run.registry import settings_for, stage_registry
from kn_lib.run.results import ResultStore, cache_key, load
from kn_lib.run.runner import SHARD_DELAY_ENV, run_stage

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-random-llama"
RELATIONS = "P30,P140"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def settings(facts: int, chunk: int = 2):
    return settings_for(MODEL, "smoke", relations=RELATIONS, facts_per_relation=facts, steps=2, chunk_size=chunk, device="cpu")


def attribute_store(root: Path, s) -> ResultStore:
    return ResultStore(root, MODEL, "attribute", cache_key(stage_registry()["attribute"].key_settings(s)))


def facts_in(root: Path, s) -> set[str]:
    """The facts a stored sample holds: each has a usable prompt or a fact-level skip."""
    args = {"preset": "smoke", "relations": RELATIONS, "facts_per_relation": s.facts_per_relation, "steps": 2,
            "chunk_size": s.chunk_size, "root": root}
    prompts, skipped = load(MODEL, "attribute", "prompts", **args), load(MODEL, "attribute", "skipped", **args)
    return set(prompts["fact_id"]) | set(skipped["fact_id"])


def together(*calls):
    """Start the calls at the same moment, in threads; their results in order."""
    barrier, out, errors = threading.Barrier(len(calls)), [None] * len(calls), []

    def go(i, call):
        barrier.wait()
        try:
            out[i] = call()
        except BaseException as err:  # noqa: BLE001  (re-raised below)
            errors.append(err)

    threads = [threading.Thread(target=go, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    return out


def test_two_identical_runs_started_together_compute_each_shard_once(tmp_path):
    """Two `kn attribute` processes with the same settings: 6 shards computed once between them."""
    root = tmp_path / "out"
    env = {**os.environ, SHARD_DELAY_ENV: "0.5", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kn_lib.run.cli", "attribute", "--model", MODEL, "--preset", "smoke", "--relations", RELATIONS,
           "--facts-per-relation", "6", "--steps", "2", "--chunk-size", "2", "--device", "cpu", "--threads", "1",
           "--out", str(root), "--no-progress"]
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    counts = []
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
        found = re.search(r"12 facts in 6 shards \((\d+) computed, (\d+) reused\)", out)
        assert found, out
        counts.append((int(found[1]), int(found[2])))
    assert sum(c for c, _ in counts) == 6, counts  # every shard computed exactly once
    assert all(c + r == 6 for c, r in counts), counts
    store = attribute_store(root, settings(6))
    assert store.verify() == {} and len(store.entries()) == 6
    assert not list((store.dir / ".claims").iterdir())
    assert facts_in(root, settings(6)) == set(settings(6).selected_fact_ids())


def test_threads_share_the_shards(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARD_DELAY_ENV, "0.2")
    s = settings(4)  # 4 shards
    adapters = [load_adapter(MODEL) for _ in range(2)]  # built first: transformers' lazy imports are not thread-safe
    a, b = together(*(lambda m=m: run_stage("attribute", s, tmp_path, progress=False, adapter=m) for m in adapters))
    assert a.shards_computed + b.shards_computed == 4
    assert a.shards_computed + a.shards_reused == 4 and b.shards_computed + b.shards_reused == 4


def test_small_and_large_sample_racing_lose_nothing(tmp_path, monkeypatch):
    """A 2-facts run and a 20-facts run with the same settings at once (shards of 8 facts: the small
    run's chunk-00000 holds 2 of the large run's 8): both samples load whole afterwards."""
    monkeypatch.setenv(SHARD_DELAY_ENV, "0.2")
    small, large = settings(2, chunk=8), settings(20, chunk=8)
    a, b = load_adapter(MODEL), load_adapter(MODEL)  # built first: transformers' lazy imports are not thread-safe
    together(lambda: run_stage("attribute", small, tmp_path, progress=False, adapter=a),
             lambda: run_stage("attribute", large, tmp_path, progress=False, adapter=b))
    store = attribute_store(tmp_path, large)
    assert store.verify() == {}
    assert len(store.entries()["P30/chunk-00000"]["fact_ids"]) == 8
    assert facts_in(tmp_path, large) == set(large.selected_fact_ids())  # 40 of 40 facts
    assert facts_in(tmp_path, small) == set(small.selected_fact_ids())


def test_an_entry_is_never_replaced_by_one_covering_fewer_facts(tmp_path):
    """The late, smaller write of the race (the order that lost facts before): the larger entry stays,
    its files untouched; an equal or larger one replaces it; a smaller one replaces a corrupt one."""
    store = ResultStore(tmp_path, MODEL, "attribute", "k")
    store.create({"a": 1})
    big, small = [f"P30/{i}" for i in range(8)], ["P30/0", "P30/1"]
    table = lambda ids: {"coarse": pd.DataFrame({"fact_id": ids})}  # noqa: E731
    kept = store.write_shard("P30/chunk-00000", table(big), {"fact_ids": big})
    mtime = (store.dir / "coarse/P30/chunk-00000.parquet").stat().st_mtime_ns
    assert store.write_shard("P30/chunk-00000", table(small), {"fact_ids": small}) == kept
    assert store.entries()["P30/chunk-00000"] == kept
    assert (store.dir / "coarse/P30/chunk-00000.parquet").stat().st_mtime_ns == mtime
    assert list(store.read("coarse")["fact_id"]) == big

    (store.dir / "coarse/P30/chunk-00000.parquet").write_bytes(b"broken")
    store.write_shard("P30/chunk-00000", table(small), {"fact_ids": small})
    assert list(store.read("coarse")["fact_id"]) == small


def test_claims(tmp_path):
    store = ResultStore(tmp_path, MODEL, "attribute", "k")
    store.create({"a": 1})
    assert store.claim("P30/chunk-00000", "run-a") == "mine"
    assert store.claim("P30/chunk-00000", "run-b") == "theirs"  # this process is alive
    assert store.claim("P30/chunk-00000", "run-a") == "mine"  # its own claim
    store.release("P30/chunk-00000", "run-b")  # not b's: left alone
    assert store.claim("P30/chunk-00000", "run-b") == "theirs"
    store.release("P30/chunk-00000", "run-a")
    assert store.claim("P30/chunk-00000", "run-b") == "mine"
    store.write_shard("P30/chunk-00000", {"coarse": pd.DataFrame({"x": [1]})}, {"fact_ids": ["P30/0"]})
    assert store.claim("P30/chunk-00000", "run-c", lambda entry: True) == "done"
