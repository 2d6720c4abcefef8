"""The claims chapter's plumbing: which committed tables each claim reads, and how its tables are shown."""

import numpy as np
import pandas as pd
import pytest

from kn_lib.book import claim_tables, table_style
from kn_lib.run.results import ResultsNotFound


class FakeSample:
    """A BookSample stand-in whose committed results are the ``stages`` given (stage -> table -> frame)."""

    def __init__(self, stages: dict, model: str = "m", share_rule: str = "official"):
        self.stages, self.model, self.share_rule = stages, model, share_rule

    def load(self, stage, table=None, **kwargs):
        key = (table, tuple(sorted(kwargs.get("params", {}).items())))
        try:
            return self.stages[stage][key]
        except KeyError:
            raise ResultsNotFound(f"no {stage}") from None


def _frame(tag):
    return pd.DataFrame({"x": [tag]})


def test_load_tables_leaves_out_and_reports_missing_runs():
    said = []
    sample = FakeSample({"statistics": {("pairs", ()): _frame("pairs")}, "update": {("table", ()): _frame("upd")}})
    out = claim_tables.load_tables(sample, ["pairs", "update", "erase"], "small", said.append)
    assert set(out) == {"pairs", "update"} and out["update"]["x"][0] == "upd"
    assert said == ["small: erase not run (or nothing committed yet)"]


def test_stored_tables_adds_the_sign_aware_edit_and_reports_each_missing_stage_once():
    said = []
    signed = (("lambda2", 2.0), ("sign_aware", True))
    sample = FakeSample({"update": {("table", ()): _frame("upd"), ("table", signed): _frame("signed")}})
    groups = claim_tables.stored_tables(sample, "m", said.append)
    assert list(groups) == ["m"] and groups["m"]["update_signed"]["x"][0] == "signed"
    assert set(groups["m"]) == {"update", "update_signed"}
    # each stage said once: update's paraphrases and ppl_prompts are missing, its table is not
    stages = ("statistics", "suppress-amplify", "bingrel", "erase", "update", "bingrel (bingrel_abs)")
    assert "erase_by_relation" in claim_tables.ALL_TABLES  # erase said once for its two tables
    assert said == [f"m: {s} not run (or nothing committed yet)" for s in stages]


def test_each_table_comes_from_the_first_run_that_has_it_and_says_which():
    said = []
    official = FakeSample({"statistics": {("pairs", ()): _frame("official pairs")},
                           "erase": {("table", ()): pd.DataFrame()}})  # empty: still being computed
    earlier = FakeSample({"statistics": {("pairs", ()): _frame("earlier pairs")},
                          "erase": {("table", ()): _frame("earlier erase")}})
    runs = {"official definitions": official, "earlier definitions": earlier}
    groups = claim_tables.load_first(runs, ["pairs", "erase", "suppress"], "known", said.append)
    assert groups["known, official definitions"]["pairs"]["x"][0] == "official pairs"
    assert groups["known, earlier definitions"]["erase"]["x"][0] == "earlier erase"
    assert set(groups) == {"known, official definitions", "known, earlier definitions"}
    assert said == ["known: suppress-amplify not run (or nothing committed yet)"]
    design = claim_tables.tables_by_sample({"big": (official, ["pairs"]), "known": (runs, ["erase"])}, said.append)
    assert {g: set(t) for g, t in design.items()} == {"big": {"pairs"}, "known, earlier definitions": {"erase"}}


def test_first_committed_takes_the_largest_sample_with_every_table():
    said = []
    big = FakeSample({"update": {("paraphrases", ()): _frame("big")}}, model="big")
    empty = FakeSample({"update": {("paraphrases", ()): _frame("e"), ("ppl_prompts", ()): pd.DataFrame()}})
    small = FakeSample({"update": {("paraphrases", ()): _frame("small"), ("ppl_prompts", ()): _frame("small")}})
    label, found = claim_tables.first_committed({"48": big, "30": empty, "10": small}, ["paraphrases", "ppl_prompts"],
                                                said.append)
    assert label == "10" and found["paraphrases"]["x"][0] == "small"
    assert said == [f"{n}: update not run (or nothing committed yet)" for n in ("48", "30")]
    assert claim_tables.first_committed({"48": big}, ["ppl_prompts"], said.append) == (None, {})


def test_verdict_counts_name_every_verdict():
    counts = claim_tables.verdict_counts(pd.DataFrame({"verdict": ["holds", "confirmed, smaller", "holds", "no data"]}))
    assert counts["holds"] == 2 and counts["smaller"] == 1 and counts["no_data"] == 1 and counts["reversed"] == 0
    assert set(counts) >= {"larger", "not_detected", "exceeded", "inconclusive"}


def test_shown_claims_put_interval_unit_and_n_in_readable_cells():
    claims = pd.DataFrame([{"claim": "a", "where": "Table 2", "unit": "neurons", "paper": 1.0, "ours": 0.5, "ci_low": 0.25,
                            "ci_high": 0.75, "n_clusters": 12, "direction": "confirmed", "size": "smaller",
                            "verdict": "confirmed, smaller", "note": "", "kind": "paper's metric"},
                           {"claim": "b", "where": "Table 6", "unit": "Δ perplexity", "paper": 8.4, "ours": 1.71e10,
                            "ci_low": 7.47e6, "ci_high": 4.08e12, "n_clusters": 55, "direction": "", "size": "",
                            "verdict": "borderline", "note": "from log-probabilities", "kind": "paper's metric"},
                           {"claim": "c", "where": "Figure 4", "unit": "%", "paper": -29.03, "ours": float("nan"),
                            "ci_low": float("nan"), "ci_high": float("nan"), "n_clusters": 3, "direction": "", "size": "",
                            "verdict": "no data", "note": "", "kind": "paper's metric"}])
    shown = claim_tables.shown_claims(claims)
    assert list(shown.columns) == ["claim", "where", "n", "ours [95% CI]", "paper (BERT)", "verdict", "note"]
    assert shown["ours [95% CI]"].tolist() == ["0.500 [0.250, 0.750] neurons",
                                                "17.1 billion [7.47 million, 4.08 trillion] Δ perplexity", "—"]
    assert shown["paper (BERT)"].tolist() == ["1 neurons", "8.4 Δ perplexity", "-29%"]
    assert shown["note"].tolist() == ["—", "from log-probabilities", "—"] and shown["n"].tolist() == [12, 55, 3]
    assert claims["paper"][0] == 1.0  # the input is left alone
    with_model = claim_tables.shown_claims(claims.assign(model="m", sample="s"))
    assert list(with_model.columns[:4]) == ["model", "claim", "where", "sample"]


def test_claim_cell_keeps_three_figures_where_shared_decimals_would_blur():
    assert claim_tables.claim_cell(-64.6, -81.2, -37.3, "%") == "-64.6% [-81.2, -37.3]"
    assert claim_tables.claim_cell(6.06e-5, 1.71e-7, 0.00112, "R^2") == "0.0000606 [0.000000171, 0.00112] R²"
    assert "e" not in claim_tables.claim_cell(1e-9, 1e-12, 1e20)

def test_reach_value_reads_one_number_or_nan():
    reach = pd.DataFrame([{"quantity": "q", "neurons": "knowledge", "percent": 20.0, "n_edits": 121}])
    assert claim_tables.reach_value(reach, "q", "knowledge") == 20.0
    assert claim_tables.reach_value(reach, "q", "knowledge", "n_edits") == 121
    assert np.isnan(claim_tables.reach_value(reach, "q", "random"))
    assert np.isnan(claim_tables.reach_value(pd.DataFrame(), "q", "knowledge"))


def test_official_then_earlier_names_both_runs():
    from kn_lib.book import EARLIER_DEFINITIONS, BookSample

    runs = claim_tables.official_then_earlier(BookSample(facts_per_relation=10))
    assert list(runs) == ["official definitions", "earlier definitions"]
    assert runs["official definitions"].params == () and runs["earlier definitions"].params == EARLIER_DEFINITIONS
    assert runs["earlier definitions"].facts_per_relation == 10


def test_load_stage_reads_the_first_run_that_has_it():
    import pytest

    official = FakeSample({})
    earlier = FakeSample({"suppress-amplify": {(None, ()): _frame("rows")}})
    assert claim_tables.load_stage({"o": official, "e": earlier}, "suppress-amplify")["x"][0] == "rows"
    with pytest.raises(ResultsNotFound):
        claim_tables.load_stage({"o": official}, "suppress-amplify")


def test_first_run_passes_over_a_run_without_rows_and_names_the_one_it_takes():
    import pytest

    computing = FakeSample({"erase": {("by_relation", ()): pd.DataFrame()}})  # started, nothing saved yet
    earlier = FakeSample({"erase": {("by_relation", ()): _frame("rows")}})
    label, sample = claim_tables.first_run({"official": computing, "earlier": earlier}, "erase", "by_relation")
    assert label == "earlier" and sample is earlier
    assert claim_tables.first_run({"official": earlier}, "erase", "by_relation") == ("official", earlier)
    with pytest.raises(ResultsNotFound):
        claim_tables.first_run({"official": computing, "none": FakeSample({})}, "erase", "by_relation")


def test_bingrel_claims_use_the_official_mean_with_absent_relations_at_zero():
    import pandas as pd

    from kn_lib.book.claim_tables import with_absent_relations
    from kn_lib.experiments.bingrel_activation import table4_means

    by_relation = pd.DataFrame({"method": "ig", "relation": ["P19"] * 3, "type": ["T1", "T2", "T3"],
                                "activation": [0.6, 0.3, 0.0]})
    full = with_absent_relations(by_relation, ["P19", "P36", "P30"])
    assert len(full) == 9 and full[full.relation == "P36"].activation.eq(0).all()
    official = table4_means(by_relation, ["P19", "P36", "P30"], "official")
    assert official["T1"] == pytest.approx(0.2) == full[full.type == "T1"].activation.mean()
    assert table4_means(by_relation, ["P19", "P36", "P30"], "present")["T1"] == pytest.approx(0.6)


def test_matched_tables_take_each_table_under_definitions_every_design_has():
    said = []
    designs = {
        "official rule": {"official definitions": FakeSample({"update": {("table", ()): _frame("rule A, official")},
                                                               "statistics": {("pairs", ()): _frame("A pairs")}}),
                          "earlier definitions": FakeSample({"update": {("table", ()): _frame("rule A, earlier")},
                                                              "erase": {("table", ()): _frame("A erase, earlier")}})},
        "paper rule": {"official definitions": FakeSample({"statistics": {("pairs", ()): _frame("B pairs")},
                                                            "erase": {("table", ()): _frame("B erase, official")}}),
                       "earlier definitions": FakeSample({"update": {("table", ()): _frame("rule B, earlier")}})},
    }
    out = claim_tables.matched_tables(designs, ["pairs", "update", "erase", "suppress"], said.append)
    # pairs: both official; update: only the earlier definitions are in both, though rule A has official
    assert out["official rule"]["official rule, official definitions"]["pairs"]["x"][0] == "A pairs"
    assert out["official rule"]["official rule, earlier definitions"]["update"]["x"][0] == "rule A, earlier"
    assert out["paper rule"]["paper rule, earlier definitions"]["update"]["x"][0] == "rule B, earlier"
    # erase: each design has it under other definitions only, so the first keeps its own, the other none
    assert out["official rule"]["official rule, earlier definitions"]["erase"]["x"][0] == "A erase, earlier"
    assert all("erase" not in group for group in out["paper rule"].values())
    assert said == ["erase: no run under the same definitions in every design (official rule: earlier "
                    "definitions; paper rule: official definitions); kept for the first only",
                    "suppress-amplify (suppress): not committed for official rule, paper rule"]


def test_matched_tables_take_a_definition_free_table_from_each_design_own_first_run():
    said = []
    designs = {"a": {"official definitions": FakeSample({}),
                     "earlier definitions": FakeSample({"statistics": {("pairs", ()): _frame("a, earlier")}})},
               "b": {"official definitions": FakeSample({"statistics": {("pairs", ()): _frame("b, official")}}),
                     "earlier definitions": FakeSample({})}}
    assert {"pairs", "bingrel", "bingrel_abs"} == set(claim_tables.DEFINITION_FREE)
    out = claim_tables.matched_tables(designs, ["pairs"], said.append)
    assert out["a"]["a, earlier definitions"]["pairs"]["x"][0] == "a, earlier"
    assert out["b"]["b, official definitions"]["pairs"]["x"][0] == "b, official"
    assert said == []


def test_matched_tables_leave_a_table_one_design_lacks_to_the_others():
    said = []
    designs = {"a": {"official definitions": FakeSample({}), "earlier definitions": FakeSample({"update": {("table", ()): _frame("a")}})},
               "b": {"official definitions": FakeSample({}), "earlier definitions": FakeSample({})}}
    out = claim_tables.matched_tables(designs, ["update"], said.append)
    assert out == {"a": {"a, earlier definitions": {"update": out["a"]["a, earlier definitions"]["update"]}}, "b": {}}
    assert out["a"]["a, earlier definitions"]["update"]["x"][0] == "a"
    assert said == ["update: not committed for b"]


def _by_relation(rows: list[tuple]) -> pd.DataFrame:
    """suppress-amplify ``by_relation`` rows: (relation, method, operation, facts with KNs, change ratio)."""
    return pd.DataFrame([{"relation": r, "scope": "own", "operation": op, "method": m, "n_facts": 4, "n_facts_with_kn": k,
                          "change_ratio": c} for r, m, op, k, c in rows])


def test_figure45_by_relation_and_the_relations_with_kns():
    rows = [("P1", "ig", "suppress", 3, -0.5), ("P1", "ig", "amplify", 3, 0.25), ("P1", "activation", "suppress", 3, -0.1),
            ("P1", "activation", "amplify", 3, 0.0), ("P2", "ig", "suppress", 0, 0.0), ("P2", "ig", "amplify", 0, 0.0),
            ("P2", "activation", "suppress", 0, -0.2), ("P2", "activation", "amplify", 0, 0.1)]
    table = _by_relation(rows)
    shown = claim_tables.figure45_by_relation(table)
    assert shown.columns.tolist() == ["relation", "facts with KNs", "suppress, KNs (%)", "amplify, KNs (%)",
                                      "suppress, baseline (%)", "amplify, baseline (%)"]
    assert shown.iloc[0].tolist() == ["P1", 3, -50.0, 25.0, -10.0, 0.0]
    assert shown.iloc[1].tolist() == ["P2", 0, 0.0, 0.0, -20.0, 10.0]
    kept = claim_tables.relations_with_kns(table)
    assert set(kept["relation"]) == {"P1"} and len(kept) == 4  # both methods of P1, nothing of P2


@pytest.mark.parametrize("value, text", [(6.06e-05, "0.0000606"), (0.00116, "0.00116"), (12.25, "12.2"), (999.6, "1,000"),
                                         (125732.4, "125,732"), (1.764445e9, "1,764,445,000"), (-0.5, "-0.5"), (0.0, "0"),
                                         (float("nan"), "—")])
def test_number_text_never_writes_scientific_notation(value, text):
    assert table_style.number_text(value) == text
    assert "e" not in table_style.number_text(value).lower()
