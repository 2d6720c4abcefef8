"""The critiques' stages (``kn_lib.run.critique_stages``) through the ``kn`` command, on the tiny random
LLaMA: after ``kn run --preset smoke``, ``kn edit-localization`` and ``kn symmetry`` exit 0, write their
tables with the experiments' columns and account for every fact (edited, or skipped with its reason), and
a second call reuses the shard; ``kn grammar`` runs one BLiMP paradigm, keys its shard by its options and
not by the fact sample; bad options fail in one line.

The tiny models rarely answer a fact (or know a BLiMP noun): these tests check what the stage machinery
guarantees, not the science (``test_edit_localization``, ``test_symmetric_edits`` and
``test_grammar_neurons`` plant their effects)."""

from __future__ import annotations

import os
import re

import pandas as pd
import pytest

from conftest import MIRROR, run_kn
from kn_lib.experiments.controls import CONTROLS
from kn_lib.experiments.edit_localization import FACT_COLUMNS as EL_FACTS, TABLE_COLUMNS as EL_TABLE
from kn_lib.experiments.grammar_neurons import NEURON_SETS, TABLE_COLUMNS as GRAMMAR_TABLE
from kn_lib.experiments.symmetric_edits import PROMPT_COLUMNS as SYM_PROMPTS, REVERSE, TABLE_COLUMNS as SYM_TABLE
from kn_lib.run import results
from kn_lib.run.cli import main
from kn_lib.run.critique_stages import CRITIQUE_STAGES, GRAMMAR_TABLES
from kn_lib.run.registry import settings_for, stage_registry

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
MODEL = "tiny-random-llama"
TAGS = ["model", "method", "seed"]  # the columns every experiment table gets after its own
PARADIGM = "determiner_noun_agreement_2"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def common(root) -> list[str]:
    return ["--model", MODEL, "--preset", "smoke", "--out", str(root), "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    """``kn run --preset smoke`` (attribute and refine of 2 relations x 2 facts) once for the module."""
    root = tmp_path_factory.mktemp("critiques")
    assert main(["run", *common(root)]) == 0
    return root


def shards(out: str, stage: str) -> tuple[int, int]:
    """(computed, reused) from the stage's summary line."""
    found = re.search(rf"^{stage} {MODEL}: .*?\((\d+) computed, (\d+) reused\)", out, re.M)
    assert found, out
    return int(found[1]), int(found[2])


def key_of(out: str, stage: str) -> str:
    """The settings key of the results directory the summary line ends with (``-> root/model/stage/key``)."""
    found = re.search(rf"-> \S+/{MODEL}/{stage}/(\w+)\s*$", out, re.M)
    assert found, out
    return found[1]


def fact_level(skipped: pd.DataFrame) -> pd.DataFrame:
    """Skip rows about a whole fact (group), not one of its prompts (pairs)."""
    return skipped[skipped["item"].isna()]


def assert_accounted(done: set[str], skipped: pd.DataFrame, expected: set[str]) -> None:
    """Every expected fact is done or skipped as a whole with a reason, never both, and nothing else appears."""
    skipped_facts = set(fact_level(skipped)["fact_id"])
    assert done | skipped_facts == expected and not done & skipped_facts
    assert fact_level(skipped)["reason"].str.len().gt(0).all()


def test_the_critiques_are_registered_after_refine():
    assert CRITIQUE_STAGES == ("edit-localization", "symmetry", "grammar")
    for stage in ("edit-localization", "symmetry"):
        spec = stage_registry()[stage]
        assert spec.depends == ("refine",) and spec.tables[0] == "table" and spec.tables[-2:] == ("summary", "skipped")
    assert stage_registry()["edit-localization"].tables[1] == "facts" and stage_registry()["symmetry"].tables[1] == "prompts"
    assert stage_registry()["grammar"].tables == GRAMMAR_TABLES


def test_edit_localization_writes_its_tables_and_a_rerun_reuses_them(smoke_root, capsys):
    code, out, err = run_kn(capsys, "edit-localization", *common(smoke_root))
    assert code == 0, err
    assert shards(out, "edit-localization") == (1, 0)  # one shard over the sample, its controls inside it
    load = lambda table, **kw: results.load(MODEL, "edit-localization", table, root=smoke_root, preset="smoke", **kw)  # noqa: E731
    table, facts, summary, skipped = (load(t) for t in ("table", "facts", "summary", "skipped"))
    assert list(table.columns) == EL_TABLE + TAGS and list(facts.columns) == EL_FACTS + TAGS
    assert {"n_facts", "n_layers", "r2_layer", "r2_increment", "kn_layer_success"} <= set(summary.columns) and len(summary) == 1
    assert {"reason", "fact_id", "item", "template_id"} <= set(skipped.columns)

    sample = set(settings_for(MODEL, "smoke").selected_fact_ids())
    assert_accounted(set(facts["fact_id"]), skipped, sample)
    reasons = set(fact_level(skipped)["reason"])
    assert reasons <= {"the model answers none of the fact's prompts correctly", "no knowledge neurons in the refined table",
                       "no usable prompt to edit", "no other single-token object in the relation to update to",
                       "no positive attribution score on the edited prompt (no localization)"}, reasons
    n_layers = int(summary["n_layers"].iloc[0])
    assert n_layers == 3 and int(summary["n_facts"].iloc[0]) == len(facts) == table["fact_id"].nunique()
    assert set(table["fact_id"]) == set(facts["fact_id"])
    for fact_id, rows in table.groupby("fact_id"):  # every layer, top-ig and its random control; one kn layer
        assert sorted(rows["layer"].unique()) == list(range(n_layers)), fact_id
        assert rows.groupby("neuron_set").size().to_dict() == {"top-ig": n_layers, "random-layer": n_layers}
        kn_layer = int(facts.set_index("fact_id").loc[fact_id, "kn_layer"])
        assert set(rows.loc[rows["is_kn_layer"].astype(bool), "layer"]) == {kn_layer}

    code, out, _ = run_kn(capsys, "edit-localization", *common(smoke_root))
    assert code == 0 and shards(out, "edit-localization") == (0, 1) and "nothing computed" in out
    pd.testing.assert_frame_equal(load("table"), table)

    code, out, err = run_kn(capsys, "edit-localization", *common(smoke_root), "--layer-controls", "no")
    assert code == 0, err
    assert shards(out, "edit-localization") == (1, 0)  # another key
    without = load("table", params={"layer_controls": "no"})
    assert set(without["neuron_set"]) <= {"top-ig"} and len(without) == len(table) // 2


def test_symmetry_writes_its_tables_and_a_rerun_reuses_them(smoke_root, capsys):
    code, out, err = run_kn(capsys, "symmetry", *common(smoke_root))
    assert code == 0, err
    assert shards(out, "symmetry") == (1, 0)
    load = lambda table: results.load(MODEL, "symmetry", table, root=smoke_root, preset="smoke")  # noqa: E731
    table, prompts, summary, skipped = (load(t) for t in ("table", "prompts", "summary", "skipped"))
    assert list(table.columns) == SYM_TABLE + TAGS and list(prompts.columns) == SYM_PROMPTS + TAGS
    assert {"n_edits", "knowledge_success", "knowledge_new_reverse_after", "new_reverse_before"} <= set(summary.columns)
    assert len(summary) == 1 and int(summary["n_edits"].iloc[0]) == (table["neuron_set"] == "knowledge").sum()
    # smoke samples P30 (no reverse: the stage leaves its facts out) and P36 (inverse of P1376)
    reversible = {f for f in settings_for(MODEL, "smoke").selected_fact_ids() if f.split("/")[0] in REVERSE}
    assert reversible and all(f.startswith("P36/") for f in reversible)
    assert_accounted(set(table["fact_id"]), skipped, reversible)
    for fact_id, rows in table.groupby("fact_id"):  # each edit repeated on both matched controls
        assert sorted(rows["neuron_set"]) == sorted(["knowledge", *CONTROLS]), fact_id
    assert set(prompts["fact_id"]) <= set(table["fact_id"])

    code, out, _ = run_kn(capsys, "symmetry", *common(smoke_root))
    assert code == 0 and shards(out, "symmetry") == (0, 1) and "nothing computed" in out


def test_before_refine_each_fact_critique_says_what_to_run(tmp_path, capsys):
    for stage in ("edit-localization", "symmetry"):
        code, _, err = run_kn(capsys, stage, *common(tmp_path))
        assert code == 2, stage
        assert err.startswith(f"kn: error: {stage}: no refined knowledge neurons") and f"`kn run --model {MODEL}" in err
        assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, says", [
    (["edit-localization", "--layer-controls", "maybe"], "--layer-controls"),
    (["edit-localization", "--lambda2", "lots"], "--lambda2"),
    (["grammar", "--paradigms", "nonsense"], "unknown paradigm(s) nonsense;"),
    (["grammar", "--paradigms", f"{PARADIGM},nonsense"], "unknown paradigm(s) nonsense;"),  # the valid one is not named
    (["symmetry", "--experiment-seed", "x"], "--experiment-seed"),
])
def test_a_bad_option_fails_in_one_line(argv, says, tmp_path, capsys):
    code, _, err = run_kn(capsys, *argv, *common(tmp_path))
    assert code == 2
    assert err.startswith("kn: error:") and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / MODEL).exists()  # refused before anything ran


@pytest.mark.parametrize("option, value", [("--eval-pairs", "-1"), ("--prompts-per-group", "0")])
def test_a_bad_grammar_count_fails_in_one_line(option, value, tmp_path, capsys):
    code, _, err = run_kn(capsys, "grammar", "--paradigms", PARADIGM, option, value, *common(tmp_path))
    assert code == 2 and err.startswith("kn: error:") and len(err.strip().splitlines()) == 1


GRAMMAR = ["grammar", "--model", MODEL, "--paradigms", PARADIGM, "--prompts-per-group", "3", "--threads", "1", "--no-progress"]


def test_grammar_runs_a_paradigm_and_keys_its_shard_by_its_options(tmp_path, capsys):
    from kn_lib.blimp import load_paradigm

    code, out, err = run_kn(capsys, *GRAMMAR, "--eval-pairs", "3", "--out", str(tmp_path))
    assert code == 0, err
    assert shards(out, "grammar") == (1, 0)  # one shard per paradigm
    key = key_of(out, "grammar")
    frames = {t: results.load(MODEL, "grammar", t, root=tmp_path, key=key) for t in GRAMMAR_TABLES}
    assert list(frames["table"].columns) == GRAMMAR_TABLE + TAGS
    assert {"fact_id", "relation", "layer", "neuron"} <= set(frames["refined"].columns)
    assert {"n_groups", "n_groups_with_kn", "accuracy_before", "knowledge_flip_rate"} <= set(frames["summary"].columns)
    assert len(frames["summary"]) == 1
    groups = {f"{PARADIGM}/{pair.group}" for pair in load_paradigm(PARADIGM)}  # the groups play facts
    skipped = frames["skipped"]
    assert_accounted(set(frames["table"]["fact_id"]), skipped, groups)
    assert set(skipped["relation"]) == {PARADIGM}
    # the word-level tiny vocabulary lacks most BLiMP nouns: each unusable pair is logged with its reason
    pairs = skipped[skipped["item"].notna()]
    assert pairs["item"].str.startswith("pair ").all() and pairs["reason"].str.len().gt(0).all()
    for fact_id, rows in frames["table"].groupby("fact_id"):  # at most --eval-pairs held-out pairs per group
        assert rows["pair_id"].nunique() <= 3 and set(rows["neuron_set"]) == set(NEURON_SETS), fact_id

    code, out, err = run_kn(capsys, *GRAMMAR, "--eval-pairs", "4", "--out", str(tmp_path))
    assert code == 0, err
    assert shards(out, "grammar") == (1, 0) and key_of(out, "grammar") != key
    assert len(list((tmp_path / MODEL / "grammar").iterdir())) == 2

    # the fact sample does not key the grammar: another preset reuses the shard
    code, out, err = run_kn(capsys, *GRAMMAR, "--eval-pairs", "3", "--preset", "smoke", "--out", str(tmp_path))
    assert code == 0, err
    assert shards(out, "grammar") == (0, 1) and key_of(out, "grammar") == key


def test_grammar_tables_load_by_preset_as_by_key(tmp_path, capsys):
    code, out, err = run_kn(capsys, *GRAMMAR, "--eval-pairs", "3", "--out", str(tmp_path))
    assert code == 0, err
    by_key = results.load(MODEL, "grammar", "skipped", root=tmp_path, key=key_of(out, "grammar"))
    by_preset = results.load(MODEL, "grammar", "skipped", root=tmp_path, preset="book-sample",
                             params={"paradigms": PARADIGM, "prompts_per_group": 3, "eval_pairs": 3})
    assert len(by_key) > 0 and len(by_preset) == len(by_key)
