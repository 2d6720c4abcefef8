"""Bootstrap intervals and verdicts of the "Does it hold?" chapter."""

import numpy as np
import pandas as pd
import pytest

from kn_lib.book.claims import (
    CEILING_VERDICTS,
    EFFECT_VERDICTS,
    VERDICTS,
    Interval,
    bootstrap_ci,
    ceiling_verdict,
    cluster_mean,
    group_mean_diff,
    row_mean,
    claim_row,
    direction,
    size,
    verdict,
)


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


def test_a_cluster_drawn_twice_counts_twice():
    # one row per relation: the mean of the relations' means is the mean of the rows, in every resample,
    # unless copies of a drawn relation were merged by grouping on it (a narrower interval)
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"relation": [f"P{i}" for i in range(30)], "x": rng.normal(size=30)})
    by_rows = bootstrap_ci(frame, lambda f: f["x"].mean(), "relation", n_boot=300, seed=1)
    by_relation = bootstrap_ci(frame, lambda f: f.groupby("relation")["x"].mean().mean(), "relation", n_boot=300, seed=1)
    _same(by_relation, by_rows)
    fast = bootstrap_ci(frame, cluster_mean(lambda rows: rows["x"].mean()), "relation", n_boot=300, seed=1)
    _same(fast, by_rows)


def _tables(seed=0):
    rng = np.random.default_rng(seed)
    n = 240
    return pd.DataFrame({
        "relation": rng.choice([f"P{i}" for i in range(14)], n), "method": rng.choice(["ig", "activation"], n),
        "x": np.where(rng.random(n) < 0.05, np.nan, rng.normal(size=n)), "flag": rng.random(n) < 0.3,
    })


def _same(a, b):
    assert (a.estimate, a.low, a.high, a.n_clusters) == pytest.approx((b.estimate, b.low, b.high, b.n_clusters), nan_ok=True)


@pytest.mark.parametrize("cluster", ["relation", None])
def test_cluster_sums_give_the_plain_statistics_interval(cluster):
    # the fast path (per-cluster totals weighted by draw counts) against the statistic written in pandas,
    # evaluated on each resampled frame: the same draws, the same interval
    frame = _tables()

    def paired(f):
        wide = f.pivot_table(index="relation" if cluster else f.index, columns="method", values="x", aggfunc="mean")
        return float((wide["ig"] - wide["activation"]).dropna().mean()) if {"ig", "activation"} <= set(wide) else np.nan

    cases = [
        (row_mean("x", scale=100), lambda f: 100 * f["x"].mean()),
        (row_mean("flag"), lambda f: f["flag"].mean()),
        (group_mean_diff("x", "method", "ig", "activation"),
         lambda f: f.loc[f["method"] == "ig", "x"].mean() - f.loc[f["method"] == "activation", "x"].mean()),
    ]
    if cluster:
        cases.append((cluster_mean(lambda r: r.loc[r["method"] == "ig", "x"].mean() - r.loc[r["method"] == "activation", "x"].mean()),
                      paired))
    for fast, plain in cases:
        _same(bootstrap_ci(frame, fast, cluster, n_boot=200, seed=4), bootstrap_ci(frame, plain, cluster, n_boot=200, seed=4))


def test_strict_cluster_mean_is_undefined_where_a_drawn_cluster_is_and_infinite_totals_stay_local():
    frame = pd.DataFrame({"g": list("abcdefghijkl"), "x": [1.0] * 10 + [np.nan, np.inf]})
    value = lambda rows: rows["x"].iloc[0]  # noqa: E731
    strict = bootstrap_ci(frame, cluster_mean(value, strict=True), "g", n_boot=400, seed=0)
    plain = bootstrap_ci(frame, lambda f: np.nan if f["x"].isna().any() else f["x"].mean(), "g", n_boot=400, seed=0)
    _same(strict, plain)  # resamples drawing "k" (NaN) are dropped, those drawing "l" give inf and are dropped
    assert np.isnan(strict.estimate)
    lenient = bootstrap_ci(frame.iloc[:10].assign(x=[1.0] * 9 + [np.inf]), cluster_mean(value), "g", n_boot=400, seed=0)
    assert lenient.estimate == np.inf and lenient.low == 1.0  # resamples without the infinite cluster: mean 1


def test_delta_ppl_interval_counts_a_fact_drawn_twice_as_two_facts_edits():
    from kn_lib.book.claims import _delta_ppl
    from kn_lib.experiments.update_summary import delta_ppl

    rng = np.random.default_rng(5)
    rows = []
    for fact in range(12):
        for edit in range(1 + fact % 2):  # some facts edited twice (the official sampling draws with replacement)
            for _ in range(3):
                rows.append({"fact_id": f"P1/{fact}", "edit": f"e{fact}.{edit}", "scope": "intra", "neuron_set": "knowledge",
                             "logp_before": -rng.uniform(0.5, 3), "logp_after": -rng.uniform(0.5, 4)})
    frame = pd.DataFrame(rows)

    def plain(f):  # each drawn copy of a fact keeps its own edits (its label in fact_id is its own)
        return delta_ppl(f.assign(edit=f["fact_id"].astype(str) + "/" + f["edit"]), "logp")

    fast = bootstrap_ci(frame, _delta_ppl("intra"), "fact_id", n_boot=300, seed=2)
    _same(fast, bootstrap_ci(frame, plain, "fact_id", n_boot=300, seed=2))
    assert fast.estimate == pytest.approx(delta_ppl(frame, "logp"))


def test_empty_frame_gives_nan_and_bad_level_raises():
    iv = bootstrap_ci(pd.DataFrame({"x": []}), lambda f: f["x"].mean())
    assert np.isnan(iv.estimate)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(pd.DataFrame({"x": [1.0]}), lambda f: f["x"].mean(), level=1.5)


@pytest.mark.parametrize(
    "paper, est, low, high, n, expected, found, how_big",
    [
        # a negative claim (Figure 4: -29 %; same size: the interval within [-43.5, -14.5]), every branch
        (-29.0, -25.0, -35.0, -15.0, 10, "holds", "confirmed", "same size"),
        (-29.0, -15.0, -20.0, -10.0, 10, "confirmed, smaller", "confirmed", "smaller"),  # short of the paper
        (-29.0, -45.0, -60.0, -35.0, 10, "confirmed, larger", "confirmed", "larger"),  # wholly beyond it
        (-29.0, -30.0, -50.0, -12.0, 10, "confirmed, size undetermined", "confirmed", "undetermined"),  # reaches -29, too wide
        (-29.0, -20.0, -40.0, 3.0, 10, "not detected", "not detected", "undetermined"),  # reaches both 0 and -29
        (-29.0, -2.0, -8.0, 3.0, 10, "not detected", "not detected", "smaller"),  # spans 0 only
        (-29.0, 4.0, 1.0, 7.0, 10, "reversed", "reversed", "smaller"),  # excludes 0 on the other side
        # the same branches for a positive claim (Figure 5: +31 %; same size within [15.5, 46.5])
        (31.0, 30.0, 20.0, 40.0, 10, "holds", "confirmed", "same size"),
        (31.0, 40.0, 20.0, 60.0, 10, "confirmed, size undetermined", "confirmed", "undetermined"),  # containment is not enough
        (31.0, 10.0, 5.0, 15.0, 10, "confirmed, smaller", "confirmed", "smaller"),
        (31.0, 80.0, 50.0, 120.0, 10, "confirmed, larger", "confirmed", "larger"),
        (31.0, 8.0, -2.0, 200.0, 10, "not detected", "not detected", "undetermined"),  # a positive estimate spanning 0
        (31.0, -1.0, -5.0, 10.0, 10, "not detected", "not detected", "smaller"),
        (31.0, -4.0, -7.0, -1.0, 10, "reversed", "reversed", "smaller"),
        # the ends are inclusive: an interval that touches 0 does not exclude it; one at the margin's end is within it
        (31.0, 10.0, 0.0, 20.0, 10, "not detected", "not detected", "smaller"),
        (31.0, 30.0, 15.5, 46.5, 10, "holds", "confirmed", "same size"),
        (31.0, 20.0, 10.0, 31.0, 10, "confirmed, size undetermined", "confirmed", "undetermined"),
        (31.0, 40.0, 40.0, 40.0, 10, "holds", "confirmed", "same size"),  # zero width, within the margin: equivalent
        # no data: fewer than 10 clusters whatever the interval, or nothing estimated
        (31.0, 40.0, 20.0, 60.0, 4, "no data", "—", "—"),
        (31.0, 40.0, 20.0, 60.0, 9, "no data", "—", "—"),
        (31.0, float("nan"), float("nan"), float("nan"), 10, "no data", "—", "—"),
    ],
)
def test_verdicts(paper, est, low, high, n, expected, found, how_big):
    iv = _iv(est, low, high, n)
    assert verdict(paper, iv) == expected
    assert direction(paper, iv) == found and size(paper, iv) == how_big
    row = claim_row("c", "Figure 4", paper, iv)
    assert (row["verdict"], row["direction"], row["size"]) == (expected, found, how_big)
    assert expected in EFFECT_VERDICTS and expected in VERDICTS


def test_an_end_within_its_monte_carlo_error_of_a_boundary_is_borderline():
    def iv(low, high, mc):
        return Interval((low + high) / 2, low, high, 20, 10_000, 0.95, 0, "bca", mc, mc)

    assert verdict(31.0, iv(0.5, 40.0, 1.0)) == "borderline" and direction(31.0, iv(0.5, 40.0, 1.0)) == "borderline"
    assert verdict(31.0, iv(0.5, 40.0, 0.2)) == "confirmed, size undetermined"  # 0.5 is more than 2 x 0.2 from 0
    assert verdict(31.0, iv(30.5, 46.0, 1.0)) == "borderline"  # 46 + 1 leaves the margin: same size or undetermined
    assert verdict(31.0, iv(30.5, 44.0, 1.0)) == "holds"
    assert ceiling_verdict(4.9, iv(1.0, 4.5, 0.5)) == "borderline" and ceiling_verdict(4.9, iv(1.0, 3.8, 0.5)) == "within ceiling"


def test_verdict_is_symmetric_in_size_and_sign():
    # the same interval mirrored around the paper's value gets the mirrored size, for either sign
    for paper in (31.0, -31.0):
        s = np.sign(paper)
        def iv(est, a, b):
            return _iv(s * est, *sorted((s * a, s * b)))

        assert (verdict(paper, iv(10, 8, 12)), verdict(paper, iv(52, 50, 54))) == ("confirmed, smaller", "confirmed, larger")
        assert verdict(paper, iv(31, 25, 37)) == "holds"


@pytest.mark.parametrize(
    "paper, est, low, high, n, expected, how_big",
    [
        (4.9, 2.0, 0.5, 4.0, 10, "within ceiling", "smaller"),  # at most the paper's side effect
        (4.9, 3.0, 0.5, 4.9, 10, "within ceiling", "contains it"),  # an upper end at the ceiling is within it
        (4.9, 4.0, 1.0, 9.0, 10, "inconclusive", "contains it"),  # the interval contains the paper's value
        (4.9, 400.0, 100.0, 900.0, 10, "exceeded", "larger"),  # more collateral damage than the paper reports
        (4.9, 400.0, 100.0, 900.0, 3, "no data", "—"),
        (4.9, float("nan"), float("nan"), float("nan"), 30, "no data", "—"),
    ],
)
def test_ceiling_verdicts(paper, est, low, high, n, expected, how_big):
    assert ceiling_verdict(paper, _iv(est, low, high, n)) == expected
    row = claim_row("c", "Table 5", paper, _iv(est, low, high, n), ceiling=True)
    assert (row["verdict"], row["direction"], row["size"], row["test"]) == (expected, "—", how_big, "ceiling")
    assert expected in CEILING_VERDICTS and expected in VERDICTS


def test_verdict_against_a_non_zero_null_and_row():
    # "KNs overlap more within a relation than across": paper 1.23 vs null 0.09 (effect 1.14, same size in [0.66, 1.80])
    assert verdict(1.23, _iv(1.2, 1.0, 1.4), null=0.09) == "holds"
    assert verdict(1.23, _iv(0.5, 0.4, 0.6), null=0.09) == "confirmed, smaller"
    assert verdict(1.23, _iv(2.5, 2.0, 3.0), null=0.09) == "confirmed, larger"
    assert verdict(1.23, _iv(0.05, 0.0, 0.1), null=0.09) == "not detected"  # 0.1 > 0.09: touches the null
    assert verdict(1.23, _iv(0.03, 0.0, 0.08), null=0.09) == "reversed"
    # a paper value below a non-zero null: the paper's direction is down
    assert verdict(-1.0, _iv(-0.8, -1.2, -0.5), null=0.5) == "holds"
    assert verdict(-1.0, _iv(0.6, 0.55, 0.7), null=0.5) == "reversed"
    row = claim_row("x", "Table 2", 1.23, _iv(0.5, 0.4, 0.6), null=0.09)
    assert row["verdict"] == "confirmed, smaller" and row["paper"] == 1.23 and row["ci_low"] == 0.4
    assert row["direction"] == "confirmed" and row["size"] == "smaller"
    assert row["n_clusters"] == 10 and row["kind"] == "paper's metric"
    for judge in (verdict, direction, size):
        with pytest.raises(ValueError):
            judge(0.0, _iv(1, 0, 2))
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
    # ~-25 % against the paper's -29 %: direction confirmed, the interval within half the paper's effect of it
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

    before = table([("a", 10, 1.0, -1.0, 3.0, "not detected"), ("b", 4, 2.0, 2.0, 2.0, "no data"),
                    ("c", 12, 2.0, 1.0, 3.0, "holds"), ("only before", 8, 0, 0, 1, "holds")])
    after = table([("a", 40, 1.0, 0.5, 1.5, "holds"), ("b", 30, 2.0, 1.0, 3.0, "holds"), ("c", 30, 2.0, 1.5, 2.5, "holds"),
                   ("only after", 9, 0, 0, 1, "not detected")])
    out = compare_designs(before.assign(sample="small"), after.assign(sample="big")).set_index("claim")
    assert out.loc["a", "sample_before"] == "small" and out.loc["only after", "sample"] == "big"
    assert out.loc["a", "width_ratio"] == pytest.approx(0.25)  # 1.0 wide after, 4.0 before
    assert out.loc["c", "width_ratio"] == pytest.approx(0.5)
    # only claims with data on both sides are comparisons: "no data" -> "holds" is not a changed verdict
    assert out["both_data"].to_dict() == {"a": True, "b": False, "c": True, "only before": False, "only after": False}
    assert out["verdict_changed"].to_dict() == {"a": True, "b": False, "c": False, "only before": False, "only after": False}
    assert np.isnan(out.loc["b", "width_ratio"])  # no data before: no ratio
    assert out.loc["a", "n_clusters_before"] == 10 and out.loc["a", "n_clusters_after"] == 40 and out.loc["a", "sample"] == "big"
    assert set(out.index) == {"a", "b", "c", "only before", "only after"}


def test_claims_by_sample_labels_rows_and_refuses_a_table_from_two_samples():
    from kn_lib.book.claims import claims_by_sample

    pairs = pd.DataFrame([{"fact_a": f"P{r}/{i}", "fact_b": f"P{r if k == 'intra' else r % 12 + 1}/{i + 1}", "method": m, "kind": k,
                           "intersection": float(k == "intra")}
                          for r in range(1, 13) for i in range(3) for m in ("ig", "activation") for k in ("intra", "inter")])
    out = claims_by_sample({"small": {"suppress": _suppress_table(8)}, "wide": {"pairs": pairs}, "empty": {}}, n_boot=100)
    by = out.groupby("sample")["claim"].apply(set)
    assert set(by.index) == {"small", "wide"}  # an empty group adds no row
    assert all("KNs" in c or "baseline" in c for c in by["wide"]) and len(by["wide"]) == 2
    assert (out[out["sample"] == "small"]["verdict"] == "no data").all()  # 8 relations: too few clusters
    assert (out[out["sample"] == "wide"]["n_clusters"] == 12).all()
    with pytest.raises(ValueError, match="suppress"):
        claims_by_sample({"a": {"suppress": _suppress_table(12)}, "b": {"suppress": _suppress_table(12)}})


def _erase_table(n_relations: int, seed: int = 0) -> pd.DataFrame:
    """erase table: per erased relation, 3 facts of its own (p halves) and 5 of other relations (p
    unchanged), each with a few prompts: a large contrast, no side effect."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_relations):
        for scope, facts, factor in (("erased", 3, 0.5), ("other", 5, 1.0)):
            for f in range(facts):
                for _ in range(2):
                    p = rng.uniform(0.2, 0.8)
                    rows.append({"erased_relation": f"P{r}", "scope": scope, "fact_id": f"{scope}{r}/{f}",
                                 "method": "ig", "p_before": p, "p_after": p * factor})
    return pd.DataFrame(rows)


def test_erase_claims_resample_erased_relations():
    from kn_lib.book.claims import paper_claims

    # Table 5 is a mean over erased relations: n is the number of relations, not of facts
    many = paper_claims({"erase": _erase_table(12)}, n_boot=100).set_index("claim")
    assert (many["n_clusters"] == 12).all() and (many["where"] == "Table 5").all()
    side = many.loc[many.index.str.contains("leaves the other")].iloc[0]
    assert side["test"] == "ceiling" and side["ours"] == pytest.approx(0) and side["verdict"] == "no data"
    # 12 erased relations: below the 20 a heavy-tailed perplexity change needs; 24 decide
    assert (many["verdict"] == "no data").all()
    enough = paper_claims({"erase": _erase_table(24)}, n_boot=200).set_index("claim")
    side = enough.loc[enough.index.str.contains("leaves the other")].iloc[0]
    assert side["verdict"] == "within ceiling" and enough.loc[enough.index.str.contains("more than the others")].iloc[0]["direction"] == "confirmed"
    # five erased relations (SmolLM2's runs): whatever the number of facts, too few clusters to decide
    few = paper_claims({"erase": _erase_table(5)}, n_boot=100)
    assert (few["n_clusters"] == 5).all() and (few["verdict"] == "no data").all()


def test_agreement_compares_only_claims_every_model_tested():
    from kn_lib.book.claims import agreement

    def table(rows):
        return pd.DataFrame([{"claim": c, "verdict": v, "direction": d} for c, v, d in rows])

    a = table([("x", "holds", "confirmed"), ("y", "confirmed, smaller", "confirmed"), ("z", "reversed", "reversed"),
               ("w", "holds", "confirmed")])
    b = table([("x", "holds", "confirmed"), ("y", "confirmed, larger", "confirmed"), ("z", "no data", "—")])
    out = agreement({"m1": a, "m2": b}).set_index("claim")
    assert list(out.index) == ["x", "y"]  # z: no data on m2; w: not tested on m2
    assert out["same direction"].all() and out["same verdict"].to_dict() == {"x": True, "y": False}
    assert out.loc["y", "m2"] == "confirmed, larger"
    assert agreement({"m1": a.assign(verdict="no data"), "m2": b}).empty


def test_no_testable_claim_gives_an_empty_table_with_every_column():
    from kn_lib.book.claims import CLAIM_COLUMNS, claims_by_sample, compare_designs, paper_claims

    empty = paper_claims({})
    assert empty.empty and list(empty.columns) == CLAIM_COLUMNS
    assert list(claim_row("c", "Table 2", 1.0, _iv(1.0, 0.5, 1.5))) == CLAIM_COLUMNS
    # the chapter's comparisons still run when a design has no committed results at all
    assert compare_designs(empty, claims_by_sample({"none": {}})).empty


def test_edit_reach_counts_edits_and_resamples_facts():
    """The official sampling may edit a fact twice: two edits, one fact (the cluster resampled)."""
    from kn_lib.book.claims import edit_reach

    para = pd.DataFrame({"edit": [1, 1, 2, 3], "fact_id": ["P19/0", "P19/0", "P19/0", "P19/1"], "neuron_set": "knowledge",
                         "template_id": [1, 2, 1, 1], "correct_before": True, "changed": True, "success": [True, False, True, True]})
    ppl = pd.DataFrame({"edit": [1, 2, 3], "fact_id": ["P19/0", "P19/0", "P19/1"], "neuron_set": "knowledge",
                        "scope": "intra", "top1_changed": [True, False, False], "new_after": False})
    row = edit_reach(para, ppl, n_boot=50).iloc[0]
    assert (row["n_edits"], row["n_facts"], row["n_prompts"]) == (3, 2, 4)
