"""The verdict rule does not depend on the bootstrap seed (issue: verdicts that survive a reviewer). Under the
old rule (1,000 percentile resamples, containment) SmolLM2's Figure 5 on known facts was "holds" for 20 of the
seeds 0-39 and "confirmed, larger" for the other 20. Here no claim of the committed known-facts runs gets two
different readings from seeds 0-39: an end that lies near a boundary for some seeds makes the claim
"borderline" there, never the neighbouring verdict (a rule on a random end cannot be constant at every
distance from a boundary; the band makes the seed choose at most between a verdict and "borderline"), and
most claims get one verdict outright. Simulated clusters show the small-sample BCa interval keeps its coverage."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from conftest import MIRROR
from kn_lib.book.bootstrap import bootstrap_ci, holm, row_mean, t_quantile, two_way_mean_diff_ci

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))


def _known_tables(model: str, edits: int | None) -> dict[str, pd.DataFrame]:
    from kn_lib.book import known_facts_sample

    known, edit = known_facts_sample(model, None if model == "smollm2-135m" else 8), known_facts_sample(model, edits)
    suppress = known.load("suppress-amplify", "by_relation")
    return {"suppress": suppress[suppress["method"].isin(["ig", "activation"])], "update": edit.load("update", "table"),
            "ppl_prompts": edit.load("update", "ppl_prompts")}


@pytest.mark.parametrize("model,edits", [("smollm2-135m", 48), ("gemma3-270m", 8)])
def test_every_committed_claim_gets_one_verdict_for_seeds_0_to_39(model, edits):
    from kn_lib.book.claims import paper_claims

    tables = _known_tables(model, edits)
    verdicts = pd.concat([paper_claims(tables, seed=seed)[["claim", "verdict"]].assign(seed=seed) for seed in range(40)])
    per_claim = verdicts.groupby("claim")["verdict"].unique()
    assert len(per_claim) >= 6
    two_readings = {claim: list(v) for claim, v in per_claim.items() if len(set(v) - {"borderline"}) > 1}
    assert not two_readings, two_readings
    flapping = [claim for claim, v in per_claim.items() if len(v) > 1]
    assert len(flapping) <= 1, flapping  # near a boundary for some seeds: rare


def test_small_sample_bca_keeps_its_coverage_on_simulated_clusters():
    rng = np.random.default_rng(7)
    for k in (10, 14):
        for draw, true in ((lambda: rng.normal(0, 1, k), 0.0), (lambda: rng.gamma(2.0, 1.0, k), 2.0)):
            hits = {"bca": 0, "percentile": 0}
            reps = 300
            for r in range(reps):
                x = np.repeat(draw(), 4) + rng.normal(0, 0.5, 4 * k)
                frame = pd.DataFrame({"x": x, "c": np.repeat(np.arange(k), 4)})
                for method in hits:
                    iv = bootstrap_ci(frame, row_mean("x"), "c", n_boot=1000, seed=r, method=method)
                    hits[method] += iv.low <= true <= iv.high
            # percentile ends under-cover with 10-14 clusters (about 0.88-0.92); the expanded BCa does not
            assert hits["bca"] / reps >= 0.92, (k, hits)
            assert hits["bca"] >= hits["percentile"], (k, hits)


def test_t_quantiles_and_holm():
    assert t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-4)
    assert t_quantile(0.025, 13) == pytest.approx(-2.160369, abs=1e-4)
    adjusted, levels = holm([0.01, 0.04, np.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[3] == pytest.approx(0.06) and adjusted[1] == pytest.approx(0.06)
    assert np.isnan(adjusted[2]) and levels[0] == pytest.approx(1 - 0.05 / 3) and levels[1] == pytest.approx(0.95)


def test_two_way_bootstrap_weights_a_pair_by_both_relations():
    # one relation's pairs carry the whole difference: leaving it out (either role) removes it
    rows = [{"a": f"R{i}", "b": f"R{j}", "kind": "intra" if i == j else "inter", "x": 1.0 if i == j else (5.0 if 0 in (i, j) else 0.0)}
            for i in range(12) for j in range(12)]
    frame = pd.DataFrame(rows)
    iv = two_way_mean_diff_ci(frame, "x", "kind", "intra", "inter", "a", "b", n_boot=2000, seed=0)
    one_way = bootstrap_ci(frame, lambda f: f.loc[f.kind == "intra", "x"].mean() - f.loc[f.kind == "inter", "x"].mean(), "a",
                           n_boot=300, seed=0, method="percentile")
    assert iv.estimate == pytest.approx(1.0 - 5.0 * 22 / 132)
    assert iv.n_clusters == 12 and (iv.high - iv.low) > (one_way.high - one_way.low)  # both roles vary: wider


def test_the_old_rule_rewarded_containment_and_holm_keeps_the_familys_directions():
    from kn_lib.book.claims import Interval, claim_row, containment_verdict, holm_family

    wide = Interval(40.0, 20.0, 60.0, 14, 1000, 0.95, 0)
    row = claim_row("amplify", "Figure 5", 31.17, wide)
    assert containment_verdict(row) == "holds" and row["verdict"] == "confirmed, size undetermined"
    assert containment_verdict(claim_row("c", "Table 5", 4.9, Interval(0, 0.5, 4.0, 12, 1000, 0.95, 0), ceiling=True)) == "holds"
    rng = np.random.default_rng(0)
    rows = []
    for i, centre in enumerate((30.0, 28.0, 0.5)):
        draws = np.sort(rng.normal(centre, 5.0, 10_000))
        iv = Interval(centre, *np.quantile(draws, [0.025, 0.975]), 20, 10_000, 0.95, 0, "percentile", draws=draws)
        rows.append(claim_row(f"c{i}", "Figure 4", 31.0, iv))
    claims = pd.DataFrame(rows)
    family = holm_family(claims, claims["claim"] != "none")
    assert list(family["holm_confirmed"]) == [True, True, False]
    assert (family["holm_high"] - family["holm_low"] >= claims["ci_high"] - claims["ci_low"] - 1e-9).all()  # wider, never narrower
