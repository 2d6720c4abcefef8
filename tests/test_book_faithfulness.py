"""The "Which neurons matter?" chapter's helpers (``kn_lib.book.faithfulness``, ``kn_lib.book.nulls``) on
hand-made tables: the method table and paired verdicts resample relations and say which side is more
faithful; every generated sentence is rendered in each of its branches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kn_lib.book import faithfulness as F
from kn_lib.book import faithfulness_text as T
from kn_lib.book import nulls
from kn_lib.book.claims import MIN_CLUSTERS, Interval


def curve_tables(n_relations: int = 12, ig_better: float = 0.2, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Two facts per relation, methods ig-m20 / grad-x-act / exact / random; IG's recall higher by ``ig_better``."""
    rng = np.random.default_rng(seed)
    curve, ranks = [], []
    for r in range(n_relations):
        for f in range(2):
            fact = f"P{r}/{f}"
            base = {"relation": f"P{r}", "fact_id": fact, "template_id": 0}
            for method, recall in (("ig-m20", 0.6 + ig_better), ("grad-x-act", 0.6), ("exact", 1.0), ("random", 0.0)):
                for k in (1, 10, 50):
                    noise = rng.normal(0, 0.02)
                    curve.append({**base, "method": method, "k": k, "recall": recall + noise, "delta_log_p": -k * recall / 10,
                                  "correct_after": True, "flip": False, "log_p_before": -1.0})
                if method in ("ig-m20", "grad-x-act"):
                    ranks.append({**base, "method": method, "spearman_candidates": 0.9, "spearman_random": 0.8 + noise,
                                  "seconds": 2.0 if method == "ig-m20" else 0.2})
    return {"curve": pd.DataFrame(curve), "ranks": pd.DataFrame(ranks)}


def test_the_method_table_averages_facts_and_counts_relations():
    table = F.method_table(curve_tables(), k=10, n_boot=200)
    ig = table.set_index("method").loc["ig-m20"]
    assert ig["recall"] == pytest.approx(0.8, abs=0.02) and ig["recall_low"] <= ig["recall"] <= ig["recall_high"]
    assert (ig["n_facts"], ig["n_relations"]) == (24, 12)
    assert ig["seconds"] == pytest.approx(2.0)
    shown = F.shown_methods(table)
    assert len(shown.columns) <= 7 and not shown.isna().any().any()
    assert shown.loc[shown["method"] == F.LABELS["random"], "s per prompt (median)"].item() == "—"
    removing = F.shown_methods(table, part="removing")
    assert list(removing.columns) == ["method", "drop of log p, top-10", "curve area", "flips, top-10", "n facts (relations)"]
    assert not removing.isin(["nan"]).any().any()
    with pytest.raises(ValueError, match="part must be"):
        F.shown_methods(table, part="other")


@pytest.mark.parametrize("ig_better,relations,expected", [
    (0.2, 12, "more faithful"), (-0.2, 12, "less faithful"), (0.0, 12, "no difference detected"), (0.2, MIN_CLUSTERS - 1, "too few relations"),
])
def test_verdicts_follow_the_paired_interval(ig_better, relations, expected):
    rows = F.verdict_rows({"m": curve_tables(relations, ig_better)}, k=10, n_boot=300)
    recall = rows[(rows["metric"] == "recall@10") & (rows["against"] == F.LABELS["grad-x-act"])].iloc[0]
    assert recall["IG is"] == expected
    sentence = T.headline(rows, {"m": F.method_table(curve_tables(relations, ig_better), 10, 200)}, 10)
    phrase = {"more faithful": "IG is more faithful", "less faithful": "gradient × activation is more faithful",
              "no difference detected": "no difference is detected", "too few relations": "too few relations to tell"}[expected]
    assert phrase in sentence and f"{2 * relations} facts" in sentence and sentence.startswith("- **m** (")
    assert "nan" not in sentence.lower()


def test_headline_and_sentences_without_data():
    assert T.headline(pd.DataFrame(), {}) == "No faithfulness run is committed yet, so this page has no answer to give."
    assert T.cost_sentence({}) == "No method was timed."
    assert T.curve_sentence({}) == "No faithfulness curve is committed."
    assert T.nonsense_sentence({}).startswith("The nonsense-prompt runs are not committed")
    assert T.filtered_sentence({}).startswith("The common-neuron runs are not committed")
    assert T.degenerate_sentence({}).startswith("The degenerate-neuron runs are not committed")


def test_cost_and_curve_sentences_name_each_method():
    table = F.method_table(curve_tables(), 10, 100)
    cost = T.cost_sentence({"m": table})
    assert "IG at m = 20 took 2 s per prompt" in cost and "gradient × activation 0.1×" in cost
    alone = T.cost_sentence({"m": table[table["method"] == "ig-m20"]})
    assert alone == "Time per prompt, measured in the runs themselves: on m, IG at m = 20 took 2 s per prompt."
    curve = T.curve_sentence({"m": table}, 10)
    assert curve.startswith("With 10 neurons zeroed, log p(answer) falls by 0.80 (IG's top 10), 0.60 (gradient × activation's), ")
    assert "(the exact top 10) and 0.00 (same-layer random neurons) on m" in curve and "-0.00" not in curve
    one = T.curve_sentence({"m": table[table["method"] == "exact"]}, 10)
    assert one == "With 10 neurons zeroed, log p(answer) falls by 1.00 (the exact top 10) on m (means over facts)."


def _interval(e, lo, hi, n=12):
    return Interval(e, lo, hi, n, 100, 0.95, 0)


@pytest.mark.parametrize("ratio,own,says", [
    ((0.4, 0.2, 0.6), (0.5, 0.3, 0.7), "fewer than real prompts"),
    ((1.0, 0.7, 1.3), (0.5, 0.3, 0.7), "as many as real prompts"),
    ((2.0, 1.5, 2.5), (np.nan, np.nan, np.nan), "none of the facts gets any on nonsense"),
    ((np.nan, np.nan, np.nan), (np.nan, np.nan, np.nan), "nothing to compare"),
])
def test_nonsense_sentence_branches(ratio, own, says):
    summary = {"ratio": _interval(*ratio), "own": _interval(*own), "any": _interval(1.0, 1.0, 1.0), "n_facts": 1, "n_relations": 1}
    sentence = T.nonsense_sentence({"m": summary})
    assert says in sentence and "nan" not in sentence.lower()
    assert ("100% of the facts get at least one" in sentence) == bool(np.isfinite(ratio[0]))
    if np.isfinite(ratio[0]):
        assert "(1 fact)" in sentence


@pytest.mark.parametrize("highs,says", [
    ((-1.0, -2.0), "still lowers p(answer) more than both controls"),
    ((-1.0, 3.0), "more than the random-layer control only"),
    ((1.0, 3.0), "does not lower p(answer) more than either control"),
    ((-1.0,), "more than its control"),
])
def test_filtered_sentence_branches(highs, says):
    controls = ["random-layer", "activation-matched"][: len(highs)]
    frame = pd.DataFrame({"operation": "suppress", "control": controls, "difference": [h - 1 for h in highs],
                          "low": [h - 2 for h in highs], "high": list(highs), "n_facts": 5, "n_relations": 2})
    assert says in T.filtered_sentence({"m": frame})
    empty = frame.iloc[0:0]
    assert "no fact keeps a knowledge neuron" in T.filtered_sentence({"m": empty})


def test_degenerate_sentence_branches():
    frame = pd.DataFrame({"neuron_set": ["knowledge", "random-layer"], "degenerate": [0.25, 0.0], "degenerate_low": [0.1, 0.0],
                          "degenerate_high": [0.4, 0.0], "n_facts": [1, 1]})
    sentence = T.degenerate_sentence({"m": frame})
    assert "25% [10%, 40%] of 1 fact have degenerate" in sentence and "(controls: random-layer 0%)" in sentence
    alone = T.degenerate_sentence({"m": frame.iloc[:1]})
    assert "controls" not in alone
    assert "no fact has two knowledge neurons" in T.degenerate_sentence({"m": frame.iloc[1:]})


def test_null_summaries_on_hand_made_tables():
    table = pd.DataFrame({"fact_id": [f"P{i % 4}/{i}" for i in range(8)], "relation": [f"P{i % 4}" for i in range(8)],
                          "n_refined_real": [2, 4, 2, 4, 2, 4, 2, 4], "n_refined_nonsense": [1, 0, 1, 0, 1, 2, 1, 0],
                          "n_shared": [1, 0, 0, 0, 1, 1, 0, 0]})
    s = nulls.nonsense_summary(table, n_boot=100)
    assert s["ratio"].estimate == pytest.approx(0.75 / 3) and s["any"].estimate == pytest.approx(5 / 8)
    assert s["own"].estimate == pytest.approx((1 + 0 + 1 + 0.5 + 0) / 5)
    rows = []
    for fact, kn_change, control_change in (("P1/0", 0.1, 0.9), ("P2/0", 0.3, 0.9)):
        for name, after in (("knowledge", kn_change), ("random-layer", control_change)):
            rows.append({"neuron_set": name, "operation": "suppress", "relation": fact[:2], "fact_id": fact, "p_before": 1.0, "p_after": after,
                         "scope": "own", "n_kn": 2})
    for name in ("knowledge", "random-layer"):  # a fact left without neurons: left out, not a zero change
        rows.append({"neuron_set": name, "operation": "suppress", "relation": "P3", "fact_id": "P3/0", "p_before": 1.0, "p_after": 1.0,
                     "scope": "own", "n_kn": 0})
    diff = nulls.filtered_vs_controls(pd.DataFrame(rows), n_boot=50)
    assert diff["difference"].item() == pytest.approx(-70.0) and diff["n_facts"].item() == 2


def test_summary_line_counts_each_verdict():
    rows = pd.DataFrame({"model": ["a", "a", "a", "b"], "IG is": ["more faithful", "less faithful", "more faithful", "no data"]})
    assert T.summary_line(rows) == "a: IG more faithful in 2 of 3 comparisons, less faithful in 1; b: no data in 1 of 1 comparison"
    assert T.summary_line(pd.DataFrame()) == "no faithfulness run is committed yet"


@pytest.mark.parametrize("direction,says", [
    ("less faithful", "gradient × activation, 10× cheaper, finds the exact top-10 better than IG"),
    ("more faithful", "IG finds the exact top-10 better than gradient × activation"),
    ("no difference detected", "no difference is detected between IG and gradient × activation"),
    ("too few relations", "the comparison has too few relations"),
])
def test_cheap_sentence_branches(direction, says):
    verdicts = pd.DataFrame({"model": ["m"], "against": [F.LABELS["grad-x-act"]], "metric": ["recall@10"],
                             "estimate": [0.1], "low": [0.05], "high": [0.2], "IG is": [direction]})
    cost = pd.DataFrame({"model": ["m", "m"], "method": ["grad-x-act", "ig-m20"], "seconds_median": [0.2, 2.0],
                         "seconds_vs_ig_m20": [0.1, 1.0], "gflop": [1.0, 20.0], "gflop_vs_ig_m20": [0.05, 1.0]})
    assert says in T.cheap_sentence(verdicts, cost)
    assert "cheaper" in T.cheap_sentence(verdicts, None) or direction == "too few relations"
    shown = F.cost_table(cost)
    assert list(shown["× IG's time"]) == ["0.1", "1"] and shown.notna().all().all() and len(shown.columns) <= 7
    big = F.cost_table(cost.assign(gflop=[2609.4, 200.8]))
    assert list(big["GFLOP"]) == ["2,609", "201"]  # no scientific notation
    assert T.cheap_sentence(pd.DataFrame(), cost).startswith("No faithfulness run")


def test_refined_sentence_branches():
    tables = curve_tables()
    refined = tables["curve"][tables["curve"]["method"] == "ig-m20"].assign(method="refined", k=3)
    with_refined = {"curve": pd.concat([tables["curve"], refined.drop_duplicates("fact_id")]), "ranks": tables["ranks"]}
    said = T.refined_sentence({"m": with_refined}, n_boot=100)
    assert "on m (24 facts, k = 3 to 3, mean 3.0) it lowers log p(answer) by" in said and "0% [0%, 0%] of the correct answers" in said
    assert "no benchmarked fact has refined knowledge neurons" in T.refined_sentence({"m": tables}, n_boot=50)
    assert T.refined_sentence({}) == ""


def test_null_rows_read_each_interval():
    summaries = {"a": {"ratio": _interval(0.3, 0.2, 0.5), "n_facts": 4, "n_relations": 2},
                 "b": {"ratio": _interval(1.1, 0.8, 1.4), "n_facts": 4, "n_relations": 2},
                 "c": {"ratio": _interval(np.nan, np.nan, np.nan), "n_facts": 0, "n_relations": 0}}
    degenerate = {"a": pd.DataFrame({"neuron_set": ["knowledge", "random-layer"], "degenerate": [0.4, 0.0], "degenerate_low": [0.2, 0.0],
                                     "degenerate_high": [0.6, 0.1], "n_facts": [5, 5], "n_relations": [2, 2]})}
    differences = {"a": pd.DataFrame({"operation": ["suppress", "suppress", "amplify"], "control": ["random-layer", "activation-matched", "random-layer"],
                                      "difference": [-40.0, 5.0, 1.0], "low": [-50.0, -2.0, 0.0], "high": [-30.0, 9.0, 2.0],
                                      "n_facts": 5, "n_relations": 2})}
    rows = nulls.null_rows(summaries, degenerate, differences)
    assert list(rows["reading"]) == ["fewer on nonsense", "as many on nonsense (1 inside the interval)", "no data", "above both controls",
                                     "the fall is larger than the control's", "no difference detected"]
    shown = nulls.shown_null_rows(rows)
    assert shown.loc[2, "ours [95% CI]"] == "—" and len(shown.columns) <= 7


def test_a_run_missing_a_relation_shard_is_not_finished(monkeypatch):
    from types import SimpleNamespace

    settings = SimpleNamespace(sample=lambda: {"P1": [{"fact_id": "P1/0"}], "P2": [{"fact_id": "P2/0"}], "P3": []})
    run = SimpleNamespace(settings=lambda: settings, manifest=lambda stage: {"shards": {"P1": {}}})
    assert F.unfinished(run, "faithfulness") == "not finished: 1 of 2 relations"
    run = SimpleNamespace(settings=lambda: settings, manifest=lambda stage: {"shards": {"P1": {}, "P2": {}}})
    assert F.unfinished(run, "faithfulness") == ""


@pytest.mark.parametrize("model,at_least", [("smollm2-135m", 100), ("gemma3-270m", 50)])
def test_the_committed_benchmark_covers_enough_known_facts(model, at_least):
    """The committed runs (``kn faithfulness``, the chapter's): finished, enough facts, every method at every
    k for every fact, recall in [0, 1] and the oracle's exactly 1."""
    tables, status = F.committed(model)
    assert tables is not None and status == "", status
    curve = tables["curve"]
    assert curve["fact_id"].nunique() >= at_least
    ranked = curve[curve["method"] != "refined"]
    methods = {"ig-m20", "ig-left-m20", "ig-converged", "grad-x-act", "activation", "exact", "random"}
    assert methods <= set(ranked["method"])
    per_fact = ranked.groupby("fact_id").apply(lambda g: len(g[["method", "k"]].drop_duplicates()), include_groups=False)
    assert (per_fact == per_fact.max()).all()
    assert ranked["recall"].between(0, 1).all() and (ranked.loc[ranked["method"] == "exact", "recall"] == 1).all()


def test_cost_note_branches():
    quiet = pd.DataFrame({"model": ["a", "a", "b"], "shared_machine": [False, False, False]})
    assert T.cost_note(quiet) == "Both runs had the machine to themselves."
    one = quiet.assign(shared_machine=[False, True, False])
    assert T.cost_note(one).startswith("The run of a shared the machine")
    both = quiet.assign(shared_machine=[True, True, True])
    assert T.cost_note(both).startswith("The runs of a and b shared the machine")
    assert T.cost_note(None) == "The cost benchmark has not been run."


def test_interval_text_never_reads_negative_zero():
    assert F.interval_text(-0.001, -0.004, 0.01, ".2f") == "0.00 [0.00, 0.01]"
    assert F.interval_text(-0.2, -0.28, -0.11, ".2f") == "-0.20 [-0.28, -0.11]"
    assert F.interval_text(float("nan"), 0, 1) == "—"
