"""The verdict map (``kn_lib.book.verdict_map``): one row per mapped claim and model, 7 columns, the
controls' reading in every branch, and cells a reader can read."""

from __future__ import annotations

import pandas as pd
import pytest

from kn_lib.book.verdict_map import MAP_COLUMNS, _controls_word, verdict_map


def _claims(**over) -> pd.DataFrame:
    row = {"where": "Figure 4", "claim": "suppressing KNs lowers p(answer)", "unit": "%", "paper": -29.03, "ours": -64.6,
           "ci_low": -81.0, "ci_high": -38.1, "n_clusters": 14, "verdict": "confirmed, larger"}
    return pd.DataFrame([{**row, **over}])


def _controls(verdicts: list[str], model: str = "m") -> pd.DataFrame:
    return pd.DataFrame([{"model": model, "intervention": "suppress", "measure": "p(answer) change", "control": f"c{i}",
                          "verdict": v} for i, v in enumerate(verdicts)])


@pytest.mark.parametrize("verdicts, word", [
    (["beats its control"] * 2, "beats both"), (["beats its control", "does not beat its control"], "beats 1 of 2"),
    (["control stronger"] * 2, "beats neither"), (["no data"] * 2, "too few to tell"), ([], "not run"),
])
def test_controls_word(verdicts, word):
    controls = _controls(verdicts) if verdicts else pd.DataFrame(columns=["model", "intervention", "measure", "verdict"])
    assert _controls_word(controls, "m", ("suppress", "p(answer) change")) == word
    assert _controls_word(controls, "m", None) == "—"


def test_one_row_per_mapped_claim_and_model_in_seven_readable_columns():
    table = verdict_map({"m": _claims(), "other": _claims(ours=float("nan"), n_clusters=1, verdict="no data")},
                        _controls(["beats its control"] * 2), model_names={"m": "Model M"})
    assert list(table.columns) == MAP_COLUMNS and len(MAP_COLUMNS) == 7 and len(table) == 2
    first, second = table.iloc[0], table.iloc[1]
    assert first["model"] == "Model M" and first["ours [95% CI]"] == "-64.6% [-81.0, -38.1]" and first["paper"] == "-29%"
    assert first["n"] == "14 relations" and first["vs both matched controls"] == "beats both"
    assert second["ours [95% CI]"] == "—" and second["n"] == "1 relation" and second["vs both matched controls"] == "not run"


def test_claims_without_a_mapped_row_are_left_out():
    assert verdict_map({"m": _claims(where="Table 9", claim="something else")}, _controls([])).empty


def test_map_reading_counts_every_kind_of_verdict():
    from kn_lib.book.verdict_map import map_reading

    table = pd.DataFrame({"verdict": ["holds", "confirmed, larger", "not detected", "no data", "within ceiling", "exceeded"]})
    assert map_reading(table) == ("Of 6 rows (a claim on a model): direction confirmed: 2 (1 of them at the paper's size); "
                                  "nothing detected: 1; too few clusters to decide: 1; within a published ceiling: 1; "
                                  "a published ceiling exceeded: 1.")
    assert map_reading(pd.DataFrame({"verdict": ["holds"]})) == (
        "Of 1 row (a claim on a model): direction confirmed: 1 (1 of them at the paper's size).")
