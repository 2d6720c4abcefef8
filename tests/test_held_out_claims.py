"""The held-out readings (``kn_lib.book.held_out``): the ratio statistic, the retention verdict's
branches, and planted tables where the effect survives held out, where it exists only on the selection
half, and where a control does nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kn_lib.book.bootstrap import Interval, bootstrap_ci, group_mean_ratio
from kn_lib.book.claims import RETENTION_VERDICTS, paper_claims, retention_verdict
from kn_lib.book.held_out import CONTROL_COLUMNS, as_figure45, held_out_controls, held_out_headline, held_out_reading, retention


def _interval(low: float, high: float, n: int = 14, mc: float = 0.0) -> Interval:
    return Interval((low + high) / 2, low, high, n, 10_000, 0.95, 0, "bca", mc, mc)


def test_group_mean_ratio_keeps_the_sign_and_is_undefined_over_a_zero_mean():
    frame = pd.DataFrame({"g": ["a", "b", "a", "b"], "x": [-3.0, -6.0, -1.0, -2.0], "c": [0, 0, 1, 1]})
    assert bootstrap_ci(frame, group_mean_ratio("x", "g", "a", "b"), "c", n_boot=200).estimate == pytest.approx(0.5)
    zero = frame.assign(x=[1.0, 0.0, 1.0, 0.0])
    assert np.isnan(bootstrap_ci(zero, group_mean_ratio("x", "g", "a", "b"), "c", n_boot=50).estimate)


@pytest.mark.parametrize("low, high, mc, expected", [
    (0.92, 1.10, 0.0, "kept held out"),
    (0.10, 0.40, 0.0, "lost held out"),
    (0.30, 0.90, 0.0, "undetermined"),
    (0.499, 0.90, 0.01, "borderline"),  # an end within its Monte Carlo error of 1 - margin
])
def test_retention_verdict_branches(low, high, mc, expected):
    assert retention_verdict(_interval(low, high, mc=mc)) == expected
    assert expected in RETENTION_VERDICTS


def test_retention_verdict_needs_enough_relations():
    assert retention_verdict(_interval(0.9, 1.1, n=5)) == "no data"


def _planted(held_out_factor: float, control_factor: float = 1.0, relations: int = 12) -> pd.DataFrame:
    """One fact per relation, 4 prompts (2 per half); suppression keeps 20% of p on the selection half and
    a fraction (1 - 0.8 * held_out_factor) on the held-out half; a control's neurons keep ``control_factor``."""
    rng = np.random.default_rng(0)
    rows = []
    for r in range(relations):
        fact = f"P{r}/0"
        for t in range(4):
            half = "selection" if t < 2 else "held-out"
            before = float(rng.uniform(0.2, 0.8))
            kept = 0.2 if half == "selection" else 1 - 0.8 * held_out_factor
            kept *= float(rng.uniform(0.95, 1.05))
            for name, factor in (("knowledge", kept), ("random-layer", control_factor), ("activation-matched", control_factor)):
                rows.append({"fact_id": fact, "relation": f"P{r}", "template_id": t, "half": half, "operation": "suppress",
                             "neuron_set": name, "n_kn": 2, "p_before": before, "p_after": before * factor, "scope": "own"})
    return pd.DataFrame(rows)


def test_an_effect_as_strong_held_out_is_kept_and_beats_a_control_that_does_nothing():
    tables = {"m": _planted(held_out_factor=1.0)}
    row = retention(tables, n_boot=2000).iloc[0]
    assert row["verdict"] == "kept held out" and row["retained"] == pytest.approx(1.0, abs=0.05)
    controls = held_out_controls(tables, n_boot=2000)
    assert set(controls["verdict"]) == {"beats its control"}
    assert controls["estimate"].to_numpy() == pytest.approx(-80, abs=4)


def test_an_effect_found_only_on_the_selection_half_is_lost_held_out():
    row = retention({"m": _planted(held_out_factor=0.1)}, n_boot=2000).iloc[0]
    assert row["verdict"] == "lost held out" and row["retained"] == pytest.approx(0.1, abs=0.05)


def test_one_half_reads_as_figure4_rows_for_the_paper_claims():
    rows = as_figure45(_planted(held_out_factor=1.0), "held-out")
    assert set(rows["method"]) == {"ig"} and len(rows) == 12
    claims = paper_claims({"suppress": rows}, n_boot=2000)
    lowers = claims[claims["claim"] == "suppressing KNs lowers p(answer)"].iloc[0]
    assert lowers["ours"] == pytest.approx(-80, abs=4) and lowers["direction"] == "confirmed"


def _retained(verdict: str, ratio: float = 0.97) -> pd.DataFrame:
    return pd.DataFrame([{"model": "m", "operation": op, "selection": -50.0, "held_out": -48.0, "retained": ratio,
                          "ci_low": ratio - 0.05, "ci_high": ratio + 0.05, "n_relations": 14, "verdict": verdict}
                         for op in ("suppress", "amplify")])


def _controls(verdicts: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"model": "m", "operation": "suppress", "control": "random-layer", "estimate": -40.0, "ci_low": -60.0,
                          "ci_high": -20.0, "n_relations": 14, "verdict": v} for v in verdicts], columns=CONTROL_COLUMNS)


@pytest.mark.parametrize("verdict, words", [
    ("kept held out", "not selection on the outcome"), ("lost held out", "mostly selection"),
    ("undetermined", "too uncertain"), ("borderline", "borderline"), ("no data", "too few relations"),
])
def test_held_out_reading_names_each_verdict(verdict, words):
    text = held_out_reading(_retained(verdict), _controls(["beats its control"] * 4), "m")
    assert words in text and text.startswith("on m (14 relations), suppressing keeps 97% [92%, 102%] of its effect and ")
    assert text.count(words) == 1
    assert text.endswith("beat both matched controls in all 4 comparisons")


def test_held_out_reading_names_the_verdict_of_each_direction_when_they_differ():
    retained = _retained("kept held out").assign(verdict=["kept held out", "undetermined"])
    text = held_out_reading(retained, _controls([]), "m")
    assert "of its effect (not selection on the outcome) and amplifying" in text and text.endswith("(too uncertain to tell)")


def test_held_out_reading_counts_lost_comparisons_and_missing_runs():
    text = held_out_reading(_retained("kept held out"), _controls(["beats its control", "does not beat its control"]), "m")
    assert text.endswith("beat their control in 1 of 2 comparisons")
    assert held_out_reading(_retained("kept held out"), _controls([]), "other") == "the held-out run of other is not committed"
    assert "comparisons" not in held_out_reading(_retained("kept held out"), _controls([]), "m")


@pytest.mark.parametrize("verdicts, words", [
    (["kept held out"] * 2, "not selection on the outcome"), (["lost held out"] * 2, "much of the effect is selection"),
    (["kept held out", "undetermined"], "in 1 of 2 model-and-direction cases"), ([], "No held-out run"),
])
def test_held_out_headline_branches(verdicts, words):
    frame = pd.DataFrame({"verdict": verdicts}, dtype=object)
    assert words in held_out_headline(frame)
