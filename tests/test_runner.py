"""The sharded runner on tiny random models: same numbers as the pipeline, resume after SIGKILL,
corrupt shards recomputed, cache keys, sample growth, and the Ray backend against the local one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from conftest import MIRROR
from kn_lib.run import results
from kn_lib.model_registry import load_adapter
from kn_lib.pipeline import find_knowledge_neurons
from kn_lib.run.results import CorruptShardWarning, ResultStore, cache_key
from kn_lib.run.runner import SHARD_DELAY_ENV, run_stage
from kn_lib.run.registry import settings_for, stage_registry

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
RELATIONS = "P30,P140"  # 4 templates each: quick
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_settings(model: str = "tiny-random-bert", **overrides):
    args = {"relations": RELATIONS, "facts_per_relation": 3, "steps": 3, "chunk_size": 2, "device": "cpu", **overrides}
    return settings_for(model, "smoke", **args)


def run(stage, settings, root, **kwargs):
    return run_stage(stage, settings, root, progress=False, **kwargs)


def tables(root, settings, stage="attribute") -> dict[str, pd.DataFrame]:
    spec = stage_registry()[stage]
    store = ResultStore(root, settings.model, stage, cache_key(spec.key_settings(settings)))
    return {t: _sorted(store.read(t)) for t in spec.tables}


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("relation", "fact_id", "template_id", "layer", "neuron") if c in frame.columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)


def files_on_disk(store: ResultStore) -> set[str]:
    return {p.relative_to(store.dir).as_posix() for p in store.dir.rglob("*") if p.is_file() and p.name != results.MANIFEST}


def listed_files(store: ResultStore) -> set[str]:
    return {t["path"] for e in store.entries().values() for t in e["tables"].values()}


@pytest.mark.parametrize("model", ["tiny-random-bert", "tiny-random-llama"])
def test_stages_compute_what_the_pipeline_computes(tmp_path, model):
    settings = tiny_settings(model)
    attribute, refine = run("attribute", settings, tmp_path), run("refine", settings, tmp_path)
    assert (attribute.shards, attribute.shards_computed, attribute.facts) == (4, 4, 6)  # 2 relations x ceil(3 / 2) chunks
    assert (refine.shards, refine.shards_computed) == (2, 2)

    facts = [f for fs in settings.sample().values() for f in fs]
    expected = find_knowledge_neurons(load_adapter(model), facts, settings.load_relations(), settings.config, progress=False)
    got = {**tables(tmp_path, settings, "attribute"), **tables(tmp_path, settings, "refine")}
    for name in ("prompts", "coarse", "refined", "thresholds", "skipped"):
        want = _sorted(getattr(expected, name))
        pd.testing.assert_frame_equal(got[name][list(want.columns)], want, check_dtype=False, obj=name)
    assert len(got["refined"]) > 0
    if model == "tiny-random-llama":  # templates with [Y] before [X] are skipped, each with its reason
        assert sum(attribute.prompts_skipped.values()) == len(got["skipped"]) > 0
    assert "facts in 4 shards (4 computed, 0 reused)" in attribute.line() and "s/fact" in attribute.line()


def test_refine_applies_a_larger_threshold_to_stored_coarse_neurons(tmp_path):
    """The baseline's t = 0.5 (its default) from coarse neurons stored at 0.2 equals the pipeline at 0.5."""
    settings = tiny_settings("tiny-random-llama", method="activation")
    assert settings.config.coarse_threshold == 0.5
    run("attribute", settings, tmp_path), run("refine", settings, tmp_path)
    stored = tables(tmp_path, settings, "attribute")["coarse"]
    facts = [f for fs in settings.sample().values() for f in fs]
    expected = find_knowledge_neurons(load_adapter(settings.model), facts, settings.load_relations(), settings.config, progress=False)
    assert len(stored) > len(expected.coarse) > 0  # stored at 0.2: more rows than at 0.5
    got = tables(tmp_path, settings, "refine")
    for name in ("refined", "thresholds"):
        want = _sorted(getattr(expected, name))
        pd.testing.assert_frame_equal(got[name][list(want.columns)], want, check_dtype=False, obj=name)
    assert (got["thresholds"]["threshold"] == 0.5).all()


def test_rerun_recomputes_nothing(tmp_path):
    settings = tiny_settings()
    run("attribute", settings, tmp_path)
    store = ResultStore(tmp_path, settings.model, "attribute", cache_key(stage_registry()["attribute"].key_settings(settings)))
    mtimes = {p: p.stat().st_mtime_ns for p in store.dir.rglob("*.parquet")}
    again = run("attribute", settings, tmp_path)
    assert (again.shards_computed, again.shards_reused, again.facts_computed) == (0, 4, 0)
    assert {p: p.stat().st_mtime_ns for p in store.dir.rglob("*.parquet")} == mtimes
    assert "nothing computed" in again.line()


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path):
    """Kill a `kn attribute` subprocess after two shards, rerun: finished shards untouched, the rest
    computed, no partial file, and the tables equal those of an uninterrupted run."""
    settings = tiny_settings("tiny-random-llama", facts_per_relation=6)  # 6 shards
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    store = ResultStore(killed_root, settings.model, "attribute", cache_key(stage_registry()["attribute"].key_settings(settings)))
    env = {**os.environ, SHARD_DELAY_ENV: "0.4", "OMP_NUM_THREADS": "1", "KN_DATA_MIRROR": os.environ["KN_DATA_MIRROR"]}
    cmd = [sys.executable, "-m", "kn_lib.run.cli", "attribute", "--model", settings.model, "--relations", RELATIONS,
           "--facts-per-relation", "6", "--steps", "3", "--chunk-size", "2", "--device", "cpu", "--threads", "1",
           "--preset", "smoke", "--out", str(killed_root), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(store.entries() if store.exists() else {}) < 2:
            assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "no shard finished within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = store.entries()
    assert 2 <= len(finished) < 6
    before = {name: {p: (store.dir / p).stat().st_mtime_ns for p in (t["path"] for t in e["tables"].values())}
              for name, e in finished.items()}

    resumed = run("attribute", settings, killed_root)
    assert (resumed.shards_reused, resumed.shards_computed) == (len(finished), 6 - len(finished))
    after = store.entries()
    for name, entry in finished.items():  # finished shards: same manifest entry, files not rewritten
        assert after[name] == entry
        assert {p: (store.dir / p).stat().st_mtime_ns for p in before[name]} == before[name]
    assert files_on_disk(store) == listed_files(store)  # no temporary or unlisted file left

    run("attribute", settings, clean_root)
    assert_same(tables(killed_root, settings), tables(clean_root, settings))


def test_corrupt_or_missing_shard_is_detected_and_recomputed(tmp_path):
    settings = tiny_settings()
    run("attribute", settings, tmp_path)
    store = ResultStore(tmp_path, settings.model, "attribute", cache_key(stage_registry()["attribute"].key_settings(settings)))
    good = tables(tmp_path, settings)
    entries = store.entries()
    truncated = store.dir / entries["P30/chunk-00000"]["tables"]["coarse"]["path"]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (store.dir / entries["P140/chunk-00001"]["tables"]["prompts"]["path"]).unlink()

    with pytest.raises(results.CorruptShard, match="checksum mismatch"):
        store.read("coarse", ["P30/chunk-00000"])
    with pytest.warns(CorruptShardWarning) as caught:
        again = run("attribute", settings, tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "P30/chunk-00000: checksum mismatch" in messages and "P140/chunk-00001: missing file" in messages
    assert (again.shards_corrupt, again.shards_computed, again.shards_reused) == (2, 2, 2)
    assert all(store.check(name).ok for name in store.entries())
    assert_same(tables(tmp_path, settings), good)


def test_changed_settings_get_a_new_key():
    base = tiny_settings()
    attribute_key = lambda s: cache_key(stage_registry()["attribute"].key_settings(s))  # noqa: E731
    refine_key = lambda s: cache_key(stage_registry()["refine"].key_settings(s))  # noqa: E731
    assert attribute_key(base) == attribute_key(tiny_settings())  # stable
    for changed in (tiny_settings(steps=4), tiny_settings(method="activation"), tiny_settings(seed=1),
                    tiny_settings(model="tiny-random-llama"), tiny_settings(chunk_size=3), tiny_settings(threshold=0.1)):
        assert attribute_key(changed) != attribute_key(base)
        assert refine_key(changed) != refine_key(base)
    # the sample size and the refinement settings (t >= 0.2 included: refine applies it to the stored
    # coarse neurons) do not change attribution, only refinement
    for changed in (tiny_settings(facts_per_relation=5), replace(base, config=replace(base.config, p_start=0.5)),
                    tiny_settings(threshold=0.3), tiny_settings(share_rule="paper")):
        assert attribute_key(changed) == attribute_key(base)
        assert refine_key(changed) != refine_key(base)
    # where it runs, and which relations, change no key (shards are per relation)
    for same in (tiny_settings(device="cuda"), tiny_settings(relations="P30")):
        assert (attribute_key(same), refine_key(same)) == (attribute_key(base), refine_key(base))


def test_larger_sample_reuses_finished_chunks(tmp_path):
    small, large = tiny_settings(facts_per_relation=2), tiny_settings(facts_per_relation=3)
    run("attribute", small, tmp_path)
    grown = run("attribute", large, tmp_path)
    assert (grown.shards_reused, grown.shards_computed) == (2, 2)  # chunk 0 of each relation was complete
    shrunk = run("attribute", small, tmp_path)
    assert shrunk.shards_computed == 0
    sample = set(small.selected_fact_ids())
    assert set(sample) <= set(large.selected_fact_ids())
    loaded = results.load(small.model, "attribute", "prompts", preset="smoke", root=tmp_path, relations=RELATIONS,
                          facts_per_relation=2, steps=3, chunk_size=2)
    assert set(loaded["fact_id"]) == sample


def test_refine_without_attribution_says_what_to_run(tmp_path):
    from kn_lib.run.registry import MissingInputs

    with pytest.raises(MissingInputs, match="run `kn attribute`"):
        run("refine", tiny_settings(), tmp_path)


def test_ray_backend_writes_the_same_shards_as_local(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (optional: pip install ray); Ray backend not tested")
    settings = tiny_settings("tiny-random-llama")
    run("attribute", settings, tmp_path / "local")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        summary = run("attribute", settings, tmp_path / "ray", backend="ray", workers=2)
    finally:
        ray.shutdown()
    assert (summary.shards_computed, summary.facts_computed) == (4, 6)
    assert_same(tables(tmp_path / "ray", settings), tables(tmp_path / "local", settings))
    manifest = json.loads((ResultStore(tmp_path / "ray", settings.model, "attribute", summary.key).manifest_path).read_text())
    assert {e["backend"] for e in manifest["shards"].values()} == {"ray"}


def test_reason_category_strips_templates_quoted_either_way():
    from kn_lib.run.runner import reason_category

    assert reason_category("'[Y] is the capital of [X].': [Y] precedes [X], a causal model cannot predict it") == "[Y] precedes [X]"
    # repr() uses double quotes for a template holding an apostrophe; its commas must not split the reason
    assert reason_category('"[Y]\'s capital, [X].": [Y] precedes [X], a causal model cannot predict it') == "[Y] precedes [X]"
    assert reason_category("multi-token object: 'Paris' is 2 tokens") == "multi-token object"


def test_batch_size_is_not_part_of_any_key():
    """Scores do not depend on IGConfig.batch_rows, so neither do results keys: a run with another batch
    size reuses the committed shards."""
    from dataclasses import replace

    from kn_lib.run.registry import settings_for, stage_registry
    from kn_lib.run.store import cache_key

    base = settings_for("tiny-random-llama", "smoke")
    other = replace(base, config=replace(base.config, ig=replace(base.config.ig, batch_rows=7)))
    for stage in ("attribute", "refine", "suppress-amplify"):
        spec = stage_registry()[stage]
        assert cache_key(spec.key_settings(base)) == cache_key(spec.key_settings(other)), stage
