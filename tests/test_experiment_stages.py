"""The paper's experiments as `kn` stages, on tiny random models: each runs after attribute + refine and
writes its tables, a rerun recomputes nothing, the activation baseline is added as a shard when present,
and running an experiment before refine is a one-line error naming the command to run first."""

from __future__ import annotations

import os

import pytest

from conftest import MIRROR
from kn_lib.experiments.controls import ALL_CONTROLS, CONTROLS
from kn_lib.run import results
from kn_lib.run.cli import main
from kn_lib.run.experiment_stages import EXPERIMENT_STAGES
from kn_lib.run.registry import MissingInputs
from kn_lib.run.results import ResultStore, cache_key
from kn_lib.run.runner import run_stage
from kn_lib.run.registry import PRESETS, KnUsageError, settings_for, stage_registry

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
RELATIONS = "P30,P36"  # P36 has BINGREL sentences with both head and tail; 4 facts in all: quick


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_settings(model: str = "tiny-random-llama", **overrides):
    args = {"relations": RELATIONS, "facts_per_relation": 2, "steps": 2, "device": "cpu", **overrides}
    return settings_for(model, "smoke", **args)


def run(stage, settings, root):
    return run_stage(stage, settings, root, progress=False)


def store_of(root, settings, stage) -> ResultStore:
    return ResultStore(root, settings.model, stage, cache_key(stage_registry()[stage].key_settings(settings)))


@pytest.fixture(scope="module", params=["tiny-random-llama", "tiny-random-bert"])
def finished(request, tmp_path_factory):
    """attribute, refine, then every experiment stage, once per model."""
    root = tmp_path_factory.mktemp(request.param)
    # erase measures other relations on a sample of 30 of their facts (all 27,000 would take minutes per shard)
    settings = tiny_settings(request.param, params={"max_other_facts": 30})
    run("attribute", settings, root)
    run("refine", settings, root)
    return root, settings, {stage: run(stage, settings, root) for stage in EXPERIMENT_STAGES}


def test_an_experiments_rows_about_other_relations_are_loaded(finished):
    # the official erase measures facts of relations the run did not analyse; loading the run by its
    # settings (as the book does) must keep them, not cut them to the sample's relations
    root, settings, _ = finished
    stored = store_of(root, settings, "erase").read("table")
    outside = ~stored["relation"].isin(RELATIONS.split(","))
    assert outside.any() and set(stored.loc[outside, "scope"]) == {"other"}
    loaded = results.load(settings.model, "erase", root=root, preset="smoke", relations=RELATIONS, facts_per_relation=2,
                          steps=2, device="cpu", params={"max_other_facts": 30})
    assert len(loaded) == len(stored)


def test_every_experiment_stage_writes_its_tables(finished):
    root, settings, summaries = finished
    assert EXPERIMENT_STAGES == ("statistics", "suppress-amplify", "bingrel", "update", "erase")
    for stage, summary in summaries.items():
        spec = stage_registry()[stage]
        assert spec.depends == ("refine",) and spec.tables[0] == "table" and spec.tables[-2:] == ("summary", "skipped")
        # no baseline yet; suppress-amplify and erase also run on the matched controls (one shard each),
        # suppress-amplify on their non-KN forms too
        shards = {"ig", *ALL_CONTROLS} if stage == "suppress-amplify" else {"ig", *CONTROLS} if stage == "erase" else {"ig"}
        assert (summary.shards, summary.shards_computed, summary.facts) == (len(shards), len(shards), 4 * len(shards)), stage
        store = store_of(root, settings, stage)
        assert set(store.entries()) == shards and set(store.tables()) == set(spec.tables)
        for table in spec.tables:
            frame = store.read(table)  # checksums verified
            assert frame.empty or {"model", "method"} <= set(frame.columns), (stage, table)
        summary_row = store.read("summary")
        # update: knowledge, random (uniform) and the two matched controls, as neuron sets of one shard
        assert len(summary_row) == (4 if stage == "update" else len(shards))
        assert set(summary_row["method"]) == (shards if stage != "update" else {"ig"}) and set(summary_row["seed"]) == {0}
        assert {"reason", "template_id"} <= set(store.read("skipped").columns)
    # the experiments' own tables have rows on these tiny models (update skips facts the model gets wrong)
    for stage in ("statistics", "suppress-amplify", "erase"):
        assert len(results.load(settings.model, stage, root=root)) > 0, stage
    # bingrel: rows, or every fact with knowledge neurons skipped with its reason (tiny BERT finds neurons
    # only for P30's facts, whose BINGREL bags of sentences with head and tail are empty)
    with_neurons = set(results.load(settings.model, "refine", root=root)["fact_id"])
    bingrel = results.load(settings.model, "bingrel", root=root)
    skipped = results.load(settings.model, "bingrel", "skipped", root=root)
    assert with_neurons == set(bingrel["fact_id"]) | set(skipped[skipped["template_id"].isna()]["fact_id"])
    if settings.model == "tiny-random-llama":
        assert len(bingrel) > 0
    stats = results.load(settings.model, "statistics", "summary", preset="smoke", root=root, relations=RELATIONS,
                         facts_per_relation=2, steps=2)
    assert stats["n_facts"].item() == 4 and stats["n_relations"].item() == 2


def test_rerun_recomputes_nothing(finished):
    root, settings, _ = finished
    mtimes = {p: p.stat().st_mtime_ns for s in EXPERIMENT_STAGES for p in store_of(root, settings, s).dir.rglob("*.parquet")}
    for stage in EXPERIMENT_STAGES:
        again = run(stage, settings, root)
        assert (again.shards_computed, again.shards_reused) == (0, {"suppress-amplify": 5, "erase": 3}.get(stage, 1)), stage
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_activation_baseline_is_added_when_present(tmp_path):
    settings = tiny_settings()
    baseline = tiny_settings(method="activation")
    for s in (settings, baseline):
        run("attribute", s, tmp_path)
        run("refine", s, tmp_path)
    stats = run("statistics", settings, tmp_path)
    assert (stats.shards, stats.shards_computed) == (2, 2)
    summary = store_of(tmp_path, settings, "statistics").read("summary")
    assert sorted(summary["method"]) == ["activation", "ig"]
    update = run("update", settings, tmp_path)  # compares with random neurons, not the baseline
    assert update.shards == 1


def test_key_holds_the_experiment_config_and_seed():
    key = lambda stage, s: cache_key(stage_registry()[stage].key_settings(s))  # noqa: E731
    base = tiny_settings()
    assert key("update", base) == key("update", tiny_settings())
    assert key("update", tiny_settings(params={"lambda2": 4.0})) != key("update", base)
    assert key("update", tiny_settings(params={"lambda2": 8.0})) == key("update", base)  # the default, given
    assert key("statistics", tiny_settings(params={"experiment_seed": 3})) != key("statistics", base)
    assert key("statistics", tiny_settings(steps=3)) != key("statistics", base)  # through the refine key
    assert stage_registry()["bingrel"].key_settings(base)["config"]["seed"] == 0
    assert stage_registry()["bingrel"].key_settings(tiny_settings(seed=5))["config"]["seed"] == 5
    assert stage_registry()["erase"].key_settings(base)["config"]["relations"] == ("P30", "P36")  # no paper relation sampled
    with pytest.raises(KnUsageError, match="not in the fact sample"):
        stage_registry()["erase"].key_settings(tiny_settings(params={"erase_relations": "P19"}))


def test_experiment_before_refine_says_what_to_run(tmp_path, capsys):
    with pytest.raises(MissingInputs, match="run `kn run --model tiny-random-llama --relations P30,P36"):
        run("suppress-amplify", tiny_settings(), tmp_path)
    for stage in EXPERIMENT_STAGES:
        code = main([stage, "--model", "tiny-random-llama", "--preset", "smoke", "--seed", "123", "--out", str(tmp_path),
                     "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2, stage
        assert err.startswith(f"kn: error: {stage}: no refined knowledge neurons") and "`kn run --model tiny-random-llama" in err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_options_and_preset(finished, capsys):
    root, settings, _ = finished
    assert PRESETS["smoke-experiments"].stages == ("attribute", "refine", *EXPERIMENT_STAGES)
    common = ["--model", settings.model, "--preset", "smoke", "--steps", "2", "--out", str(root), "--no-progress"]
    assert main(["erase", *common, "--max-other-facts", "30"]) == 0 and "(0 computed, 3 reused)" in capsys.readouterr().out
    assert main(["suppress-amplify", *common, "--unrelated", "no", "--experiment-seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "(5 computed, 0 reused)" in out  # the knowledge neurons and their four matched controls
    table = results.load(settings.model, "suppress-amplify", root=root, preset="smoke", steps=2,
                         params={"unrelated": False, "experiment_seed": 1})
    assert set(table["scope"]) == {"own"} and set(table["seed"]) == {1}
    assert main(["erase", *common, "--erase-relations", "P19"]) == 2
    err = capsys.readouterr().err
    assert "not in the fact sample" in err and err.count("\n") == 1


def test_erase_controls_reuse_the_knowledge_shards_unedited_answers_and_leave_no_partial_units(finished):
    root, settings, _ = finished
    store = store_of(root, settings, "erase")
    assert not (store.dir / "partial").exists()  # cleared once each shard was written
    table = store.read("table")
    before = table.set_index(["method", "erased_relation", "scope", "fact_id", "template_id"])["p_before"]
    for control in CONTROLS:  # the very numbers the knowledge shard measured, not a second measurement
        assert before.loc[control].sort_index().equals(before.loc["ig"].sort_index()), control


def test_erase_resumes_from_the_relations_a_killed_run_saved(finished, tmp_path):
    """A shard's erased relations saved before a kill (``PartialShard``) are taken, not measured again; the
    others are measured; the written shard is the same shape as one run's."""
    from kn_lib.run.partial import PartialShard

    root, settings, _ = finished
    done = store_of(root, settings, "erase").read("table")
    done = done[done["method"] == "ig"]
    first = done["erased_relation"].iloc[0]
    saved = done[done["erased_relation"] == first].drop(columns=["model", "method", "seed"]).assign(p_after=0.125)
    neurons = store_of(root, settings, "erase").read("neurons")
    neurons = neurons[(neurons["method"] == "ig") & (neurons["relation"] == first)][["relation", "layer", "neuron", "n_facts"]]
    run("attribute", settings, tmp_path)
    run("refine", settings, tmp_path)
    PartialShard.of(store_of(tmp_path, settings, "erase").dir, "ig").save(first, {"table": saved, "neurons": neurons})
    run("erase", settings, tmp_path)
    again = store_of(tmp_path, settings, "erase").read("table", ["ig"])
    assert (again[again["erased_relation"] == first]["p_after"] == 0.125).all()  # resumed, not remeasured
    rest = again[again["erased_relation"] != first].reset_index(drop=True)
    expected = done[done["erased_relation"] != first].reset_index(drop=True)
    assert len(rest) > 0 and rest["p_after"].tolist() == pytest.approx(expected["p_after"].tolist(), rel=1e-5)
    assert again["erased_relation"].drop_duplicates().tolist() == done["erased_relation"].drop_duplicates().tolist()
    assert not (store_of(tmp_path, settings, "erase").dir / "partial").exists()
