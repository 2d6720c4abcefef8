"""Bootstrap intervals and verdicts of the "Does it hold?" chapter."""

import numpy as np
import pandas as pd
import pytest

from kn_lib.book.claims import Interval, bootstrap_ci, ceiling_verdict, claim_row, verdict


def _iv(est, low, high, n=10):
    return Interval(est, low, high, n, 100, 0.95, 0)


def test_interval_covers_the_mean_of_normal_samples_and_is_reproducible():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(2.0, 1.0, 400)})
    iv = bootstrap_ci(frame, lambda f: f["x"].mean(), n_boot=500, seed=3)
    assert iv.low < iv.estimate < iv.high
    assert iv.low < 2.0 < iv.high
    # the standard error of the mean is 0.05: a 95% interval is about 0.2 wide
    assert 0.12 < iv.high - iv.low < 0.3
    assert bootstrap_ci(frame, lambda f: f["x"].mean(), n_boot=500, seed=3) == iv


def test_cluster_bootstrap_resamples_whole_groups():
    # two clusters with constant values: every resample mean is 0, 0.5 or 1 (never a mix within a group)
    frame = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 5, "x": [0.0] * 5 + [1.0] * 5})
    seen = set()
    iv = bootstrap_ci(frame, lambda f: (seen.add(round(f["x"].mean(), 6)), f["x"].mean())[1], cluster="g", n_boot=200)
    assert seen <= {0.0, 0.5, 1.0} and len(seen) == 3
    assert iv.n_clusters == 2 and iv.low == 0.0 and iv.high == 1.0


def test_empty_frame_gives_nan_and_bad_level_raises():
    iv = bootstrap_ci(pd.DataFrame({"x": []}), lambda f: f["x"].mean())
    assert np.isnan(iv.estimate)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(pd.DataFrame({"x": [1.0]}), lambda f: f["x"].mean(), level=1.5)


@pytest.mark.parametrize(
    "paper, est, low, high, n, expected",
    [
        # negative claim (Figure 4: -29 %), every branch
        (-29.0, -45.0, -60.0, -35.0, 10, "stronger"),  # the whole interval beyond the paper's effect
        (-29.0, -25.0, -35.0, -15.0, 10, "holds"),  # excludes 0 on the paper's side, estimate >= half
        (-29.0, -15.0, -20.0, -10.0, 10, "holds"),  # estimate just over half (14.5)
        (-29.0, -5.0, -8.0, -2.0, 10, "weaker"),  # right side, far smaller than half
        (-29.0, -20.0, -40.0, 3.0, 10, "weaker"),  # estimate large but the interval touches 0
        (-29.0, 1.0, -10.0, 12.0, 10, "inconclusive"),  # straddles 0, estimate on the other side
        (-29.0, 0.0, -10.0, 12.0, 10, "inconclusive"),  # straddles 0, estimate exactly 0
        (-29.0, 4.0, 1.0, 7.0, 10, "reversed"),  # excludes 0 on the other side
        (31.0, 40.0, 20.0, 60.0, 10, "holds"),
        (31.0, -1.0, -5.0, 10.0, 10, "inconclusive"),  # used to be "reversed" on the estimate alone
        (31.0, 8.0, 2.0, 200.0, 10, "weaker"),  # a wide interval never holds on its upper end
        # no data: fewer than 10 clusters, whatever the interval
        (31.0, 40.0, 20.0, 60.0, 4, "no data"),
        (31.0, 40.0, 20.0, 60.0, 9, "no data"),
        (31.0, 40.0, 40.0, 40.0, 9, "no data"),
        (31.0, 40.0, 40.0, 40.0, 10, "stronger"),  # zero width from 10 clusters: a real (if odd) interval
        (31.0, float("nan"), float("nan"), float("nan"), 10, "no data"),
    ],
)
def test_verdicts(paper, est, low, high, n, expected):
    assert verdict(paper, _iv(est, low, high, n)) == expected


@pytest.mark.parametrize(
    "paper, est, low, high, n, expected",
    [
        (4.9, 2.0, 0.5, 4.0, 10, "holds"),  # at most the paper's side effect
        (4.9, 4.0, 1.0, 9.0, 10, "inconclusive"),  # the interval contains the paper's value
        (4.9, 400.0, 100.0, 900.0, 10, "reversed"),  # more collateral damage than the paper reports
        (4.9, 400.0, 100.0, 900.0, 3, "no data"),
    ],
)
def test_ceiling_verdicts(paper, est, low, high, n, expected):
    assert ceiling_verdict(paper, _iv(est, low, high, n)) == expected
    assert claim_row("c", "Table 5", paper, _iv(est, low, high, n), ceiling=True)["verdict"] == expected


def test_verdict_against_a_non_zero_null_and_row():
    # "KNs overlap more within a relation than across": paper 1.23 vs null 0.09 (the inter-relation value)
    assert verdict(1.23, _iv(0.9, 0.7, 1.1), null=0.09) == "holds"
    assert verdict(1.23, _iv(0.05, 0.0, 0.1), null=0.09) == "inconclusive"  # 0.1 > 0.09: touches the null
    assert verdict(1.23, _iv(0.03, 0.0, 0.08), null=0.09) == "reversed"
    row = claim_row("x", "Table 2", 1.23, _iv(0.9, 0.7, 1.1), null=0.09)
    assert row["verdict"] == "holds" and row["paper"] == 1.23 and row["ci_low"] == 0.7
    assert row["n_clusters"] == 10 and row["kind"] == "paper's metric"
    with pytest.raises(ValueError):
        verdict(0.0, _iv(1, 0, 2))
    # nothing measured (e.g. no edit possible): no verdict rather than a false "reversed"
    assert verdict(34.4, _iv(float("nan"), float("nan"), float("nan"))) == "no data"


def _suppress_table(n_relations: int, seed: int = 0) -> pd.DataFrame:
    """suppress-amplify by_relation: KNs lower p by ~25 % when suppressed and also when amplified (so
    the amplify claim is reversed), the baseline ~0."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in (f"P{i}" for i in range(1, n_relations + 1)):
        for method, size in (("ig", 0.25), ("activation", 0.0)):
            for op in ("suppress", "amplify"):
                rows.append({"relation": r, "scope": "own", "operation": op, "method": method,
                             "change_ratio": -size + rng.normal(0, 0.02)})
    return pd.DataFrame(rows)


def test_paper_claims_on_synthetic_tables_follow_the_data():
    from kn_lib.book.claims import paper_claims

    claims = paper_claims({"suppress": _suppress_table(12)}, n_boot=200).set_index("claim")
    assert claims.loc["suppressing KNs lowers p(answer)", "verdict"] == "holds"
    assert claims.loc["amplifying KNs raises p(answer)", "verdict"] == "reversed"
    assert claims.loc["suppressing KNs lowers p(answer)", "ours"] == pytest.approx(-25, abs=3)


def test_edit_reach_rates_and_intervals():
    from kn_lib.book.claims import edit_reach

    para = pd.DataFrame({"fact_id": ["a", "a", "b", "b"] * 2, "neuron_set": ["knowledge"] * 4 + ["random"] * 4,
                         "success": [True, False, True, True, False] + [False] * 3,
                         "changed": [True] * 4 + [True, False, False, False],
                         "correct_before": [True, True, False, True] + [False, True, True, True]})
    ppl = pd.DataFrame({"fact_id": ["a", "b"] * 2, "neuron_set": ["knowledge"] * 2 + ["random"] * 2, "scope": "intra",
                        "top1_changed": [True, False, False, False], "new_after": [False] * 4})
    out = edit_reach(para, ppl, n_boot=100).set_index(["quantity", "neurons"])
    gen = out.loc[("paraphrases now answering the new object (generalisation)", "knowledge")]
    assert gen["percent"] == 75 and gen["n_edits"] == 2 and gen["ci_low"] <= 75 <= gen["ci_high"]
    assert out.loc[("other facts of the relation: answer changed (specificity)", "knowledge"), "percent"] == 50
    # "no longer the old answer" counts only paraphrases that gave the old answer before the edit
    lost = out.loc[("paraphrases that answered the old object and no longer do", "random")]
    assert lost["percent"] == 0 and lost["n_prompts"] == 3


def test_compare_designs_widths_and_changed_verdicts():
    from kn_lib.book.claims import compare_designs

    def table(rows):
        return pd.DataFrame([{"claim": c, "kind": "paper's metric", "n_clusters": n, "ours": o, "ci_low": lo, "ci_high": hi,
                              "verdict": v} for c, n, o, lo, hi, v in rows])

    before = table([("a", 10, 1.0, -1.0, 3.0, "inconclusive"), ("b", 4, 2.0, 2.0, 2.0, "no data"), ("only before", 8, 0, 0, 1, "holds")])
    after = table([("a", 40, 1.0, 0.5, 1.5, "holds"), ("b", 30, 2.0, 1.0, 3.0, "holds"), ("only after", 9, 0, 0, 1, "weaker")])
    out = compare_designs(before, after.assign(sample="big")).set_index("claim")
    assert out.loc["a", "width_ratio"] == pytest.approx(0.25)  # 1.0 wide after, 4.0 before
    assert np.isnan(out.loc["b", "width_ratio"])  # zero width before: no ratio
    assert out.loc["a", "verdict_changed"] and out.loc["b", "verdict_changed"]
    assert not out.loc["only before", "verdict_changed"] and not out.loc["only after", "verdict_changed"]
    assert out.loc["a", "n_clusters_before"] == 10 and out.loc["a", "n_clusters_after"] == 40 and out.loc["a", "sample"] == "big"
    assert set(out.index) == {"a", "b", "only before", "only after"}


def test_claims_by_sample_labels_rows_and_refuses_a_table_from_two_samples():
    from kn_lib.book.claims import claims_by_sample

    pairs = pd.DataFrame([{"fact_a": f"P{r}/{i}", "method": m, "kind": k, "intersection": float(k == "intra")}
                          for r in range(1, 13) for i in range(3) for m in ("ig", "activation") for k in ("intra", "inter")])
    out = claims_by_sample({"small": {"suppress": _suppress_table(8)}, "wide": {"pairs": pairs}, "empty": {}}, n_boot=100)
    by = out.groupby("sample")["claim"].apply(set)
    assert set(by.index) == {"small", "wide"}  # an empty group adds no row
    assert all("KNs" in c or "baseline" in c for c in by["wide"]) and len(by["wide"]) == 2
    assert (out[out["sample"] == "small"]["verdict"] == "no data").all()  # 8 relations: too few clusters
    assert (out[out["sample"] == "wide"]["n_clusters"] == 12).all()
    with pytest.raises(ValueError, match="suppress"):
        claims_by_sample({"a": {"suppress": _suppress_table(12)}, "b": {"suppress": _suppress_table(12)}})
