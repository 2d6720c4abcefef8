"""The book's knowledge-neuron-versus-control comparisons: per-unit reduction, pairing and verdicts by hand."""

import pandas as pd
import pytest

from kn_lib.book.claims import Interval
from kn_lib.book.controls import beats_control, control_claims, effect_text, effects, manipulation_by_fact


def _table():
    """Twelve facts, two prompts each; suppressing the KNs halves p and loses the answer on one prompt,
    the random-layer control changes nothing, the activation-matched one lowers p by 10 %."""
    rows = []
    for i in range(12):
        for t in range(2):
            for method, factor in (("ig", 0.5), ("random-layer", 1.0), ("activation-matched", 0.9)):
                lost = method == "ig" and t == 0
                rows.append({"fact_id": f"P1/{i}", "relation": "P1", "scope": "own", "operation": "suppress", "n_kn": 2,
                             "method": method, "p_before": 0.4, "p_after": 0.4 * factor, "correct_before": True,
                             "correct_after": not lost, "flip": lost})
    rows.append({**rows[0], "fact_id": "P1/99", "n_kn": 0, "p_after": 0.4, "flip": False})  # no KNs: left out
    return pd.DataFrame(rows)


def test_per_fact_change_and_flips():
    by_fact = manipulation_by_fact(_table())
    assert set(by_fact.fact_id) == {f"P1/{i}" for i in range(12)}
    kn = by_fact[by_fact.neuron_set == "knowledge"]
    assert kn.change.tolist() == pytest.approx([-50.0] * 12) and kn.flip.tolist() == pytest.approx([50.0] * 12)
    assert by_fact[by_fact.neuron_set == "activation-matched"].change.tolist() == pytest.approx([-10.0] * 12)


def test_paired_differences_and_verdicts():
    claims = control_claims({"m": {"suppress": _table()}}, n_boot=200).set_index(["measure", "control"])
    change = claims.loc[("p(answer) change", "random-layer")]
    assert change.estimate == pytest.approx(-50.0) and change.n == 12 and change.verdict == "beats its control"
    assert claims.loc[("p(answer) change", "activation-matched")].estimate == pytest.approx(-40.0)
    assert claims.loc[("correct answers lost", "random-layer")].estimate == pytest.approx(50.0)
    eff = effects({"m": {"suppress": _table()}}, n_boot=200)
    assert set(eff.neuron_set) == {"knowledge", "random-layer", "activation-matched"} and set(eff.n) == {12}
    # every fact's change is exactly -50 %, so the interval is a point
    assert effect_text(eff, "m", "suppress", "p(answer) change", "knowledge", signed=True) == "-50.0 [-50.0, -50.0]"
    assert effect_text(eff, "m", "suppress", "correct answers lost", "knowledge", unit="%") == "50.0% [50.0, 50.0]"


@pytest.mark.parametrize("low,high,n,expected,verdict", [
    (-5, -1, 12, -1, "beats its control"), (1, 5, 12, -1, "control stronger"), (-1, 1, 12, -1, "does not beat its control"),
    (1, 5, 12, +1, "beats its control"), (-5, -1, 12, +1, "control stronger"), (1, 5, 5, +1, "no data"),
    (float("nan"), 1, 12, +1, "no data"),
])
def test_beats_control_branches(low, high, n, expected, verdict):
    assert beats_control(Interval((low + high) / 2, low, high, n, 100, 0.95, 0), expected) == verdict
