"""The held-out update's readings (``kn_lib.book.held_out_update``) and the updating chapter's sentences
(``kn_lib.book.update_text``) on planted tables: a reach kept held out, a reach found only in-sample,
controls that do nothing, and every branch of the generated text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kn_lib.book import held_out_update as hou
from kn_lib.book.update_text import update_reading, update_sentence


def _planted(held_out_reach: float, in_sample_reach: float = 0.6, relations: int = 24, control_reach: float = 0.0) -> dict:
    """Two edits per relation, 6 other prompts per edit (3 per half, one of them wrong before the edit);
    a paraphrase gives the new answer with the half's reach, control edits with ``control_reach``."""
    rng = np.random.default_rng(0)
    rows = []
    for r in range(relations):
        for edit in (1, 2):
            for t in range(6):
                half = "selection" if t < 3 else "held-out"
                for name, reach in (("knowledge", in_sample_reach if half == "selection" else held_out_reach),
                                    ("random", control_reach), ("random-layer", control_reach), ("activation-matched", control_reach)):
                    rows.append({"edit": edit, "fact_id": f"P{r}/{edit}", "relation": f"P{r}", "neuron_set": name,
                                 "template_id": t, "half": half, "correct_before": t % 3 != 0,
                                 "changed": True, "success": bool(rng.random() < reach) or (t % 3 == 0)})
    return {"m": pd.DataFrame(rows)}


def test_per_edit_counts_only_the_paraphrases_known_before_the_edit():
    per = hou.per_edit(_planted(0.6)["m"])  # the one paraphrase per half wrong before always "succeeds": left out
    assert len(per) == 24 * 2 * 4 * 2 and per["reach"].isin([0.0, 50.0, 100.0]).all()


def test_a_reach_as_wide_held_out_is_kept_and_beats_controls_that_do_nothing():
    tables = _planted(held_out_reach=0.6)
    row = hou.reach_retention(tables, n_boot=2000).iloc[0]
    assert row["verdict"] == "kept held out" and row["retained"] == pytest.approx(1.0, abs=0.2)
    controls = hou.held_out_reach_controls(tables, n_boot=2000)
    assert set(controls["control"]) == {"random-layer", "activation-matched"}
    assert set(controls["verdict"]) == {"beats its control"} and (controls["estimate"] > 40).all()
    reading = hou.held_out_update_reading(row.to_frame().T, controls, "m", "M")
    assert "not selection on the outcome" in reading and reading.endswith("it beats every control")


def test_a_reach_found_only_in_sample_is_lost_held_out():
    tables = _planted(held_out_reach=0.05)
    kept = hou.reach_retention(tables, n_boot=2000)
    assert kept.iloc[0]["verdict"] == "lost held out"
    assert "selection on the outcome" in hou.held_out_update_reading(kept, hou.held_out_reach_controls(tables, n_boot=500), "m")


def test_too_few_relations_are_no_data_and_the_text_says_so():
    tables = _planted(held_out_reach=0.6, relations=5)
    kept, controls = hou.reach_retention(tables, n_boot=500), hou.held_out_reach_controls(tables, n_boot=500)
    assert kept.iloc[0]["verdict"] == "no data" and set(controls["verdict"]) == {"no data"}
    text = hou.held_out_update_reading(kept, controls, "m", "M")
    assert "too few relations to decide whether held-out prompts keep the reach" in text
    assert text.endswith("there are too few relations to decide")
    assert "5 relations" in text


def test_reading_counts_the_controls_beaten_and_names_a_missing_run():
    tables = _planted(held_out_reach=0.6)
    kept = hou.reach_retention(tables, n_boot=500)
    controls = hou.held_out_reach_controls(tables, n_boot=500)
    controls.loc[controls["control"] == "random-layer", "verdict"] = "does not beat its control"
    assert hou.held_out_update_reading(kept, controls, "m").endswith("it beats 1 of 2 controls")
    assert hou.held_out_update_reading(kept, controls, "other", "Other") == "the held-out update of Other is not committed"


def test_reach_and_retention_tables_are_finished():
    tables = _planted(held_out_reach=0.6)
    reach = hou.reach_table(hou.reach_by_half(tables, n_boot=500))
    assert list(reach["neurons"]) == ["knowledge neurons", "random, any layer", "random, same layer", "activation-matched"]
    assert len(reach.columns) <= 7 and not reach.isna().any().any()
    assert reach["relations"].tolist() == [24] * 4 and reach["edits"].tolist() == [48] * 4
    shown = hou.retention_table(hou.reach_retention(tables, n_boot=500), hou.held_out_reach_controls(tables, n_boot=500))
    assert len(shown) == 3 and len(shown.columns) <= 7 and not shown.isna().any().any()


def _effects(model="m"):
    rows = [{"model": model, "intervention": "update", "measure": m, "neuron_set": s, "unit": "%", "estimate": e,
             "ci_low": e - 10, "ci_high": e + 10, "n": 12, "n_unit": "relation"}
            for m in ("success", "change") for s, e in (("knowledge", 30.0), ("random-layer", 10.0), ("activation-matched", 25.0))]
    return pd.DataFrame(rows)


def _claims(verdicts: dict, model="m"):
    return pd.DataFrame([{"model": model, "intervention": "update", "measure": "success", "control": c, "unit": "points",
                          "expected": 1, "estimate": 5.0, "ci_low": -3.0, "ci_high": 13.0, "n": 12, "n_unit": "relation",
                          "verdict": v} for c, v in verdicts.items()])


def test_update_sentence_gives_every_interval_or_says_it_is_missing():
    text = update_sentence(_effects(), "m")
    assert text.startswith("over the edits of 12 relations") and "succeeds in 30.0% [20.0, 40.0]" in text
    assert "activation-matched neurons in 25.0% [15.0, 35.0]" in text
    assert update_sentence(_effects(), "other") == "the matched-control edits are not committed yet"


@pytest.mark.parametrize("verdict, words", [
    ("beats its control", "the edit's success beats its control of random neurons of the same layers"),
    ("does not beat its control", "bounds the knowledge neurons' advantage at 13.0 points but does not show the two are the same"),
    ("no data", "against random neurons of the same layers: too few relations to decide"),
    ("control stronger", "against random neurons of the same layers: control stronger"),
])
def test_update_reading_branches(verdict, words):
    text = update_reading(_claims({"random-layer": verdict, "activation-matched": "beats its control"}), "m")
    assert words in text and text.endswith(".")


def test_update_reading_without_a_run():
    assert update_reading(_claims({"random-layer": "beats its control"}), "other") == "no verdict yet."
    assert "same-layer neurons that fire as strongly: not run" in update_reading(_claims({"random-layer": "beats its control"}), "m")


def test_a_missing_run_gives_empty_tables_with_their_columns():
    empty = hou.reach_table(hou.reach_by_half({}))
    assert empty.empty and "held-out reach (%)" in empty.columns
    assert hou.retention_table(hou.reach_retention({}), hou.held_out_reach_controls({})).empty
