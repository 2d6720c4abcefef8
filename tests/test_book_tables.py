"""kn_lib.book.tables: the reshapes behind the chapters' tables, figures and glued lists."""

import pandas as pd
import pytest

from kn_lib.book import paper, tables

ERASE = {"P19": {"erased_before": 100.0, "erased_after": 250.0, "other_before": 10.0, "other_after": 11.0},
         "P99": {"erased_before": 1.0, "erased_after": 2.0, "other_before": 1.0, "other_after": 1.0}}


def _by_relation():
    return pd.DataFrame({"relation": ["P19", "P27"], "erased_ppl_change": [900.0, -5.0],
                         "other_ppl_change": [40.0, 1.0], "erased_ppl_before": [10.0, 20.0],
                         "erased_ppl_after": [100.0, 19.0], "other_ppl_before": [5.0, 5.0],
                         "other_ppl_after": [7.0, 5.05], "erased_accuracy_before": [0.5, 0.0],
                         "erased_accuracy_after": [0.0, 0.0]})


def test_relation_list_keeps_order_and_formats():
    frame = pd.DataFrame({"relation": ["P413", "P264"], "coverage": [0.1019, 0.1119]})
    text = tables.relation_list(frame, "coverage", {"P264": "record label"})
    assert text == "P413 (P413, 10%), P264 (record label, 11%)"


def test_paper_erase_changes_are_percent_changes():
    changes = tables.paper_erase_changes(ERASE).set_index(["relation", "prompts"])["change"]
    assert changes["P19", "erased"] == pytest.approx(150.0) and changes["P19", "other"] == pytest.approx(10.0)
    assert len(tables.paper_erase_changes()) == 2 * len(paper.ERASE)  # the paper's own Table 5


def test_erase_changes_puts_the_paper_first_and_only_shared_relations():
    changes = tables.erase_changes(_by_relation(), ours="ours", theirs="paper", erase=ERASE)
    assert list(dict.fromkeys(changes["source"])) == ["paper", "ours"]
    assert set(changes.loc[changes["source"] == "paper", "relation"]) == {"P19"}  # P99 not erased by us
    ours = changes[changes["source"] == "ours"].set_index(["relation", "prompts"])["change"]
    assert ours["P27", "erased"] == -5.0 and ours["P19", "other"] == 40.0 and len(ours) == 4


def test_table5_side_by_side():
    table = tables.table5(_by_relation(), erase=ERASE)
    assert table["relation"].tolist() == ["P19", "P27"]
    assert table.loc[0, "paper: erased PPL before → after"] == "100 → 250"
    assert table.loc[1, "paper: erased PPL before → after"] == "—"  # the paper did not erase P27
    assert table.loc[0, "ours: erased PPL before → after"] == "10 → 100"
    assert table.loc[1, "ours: other PPL before → after"] == "5 → 5.05"
    assert table.loc[0, "ours: erased accuracy before → after"] == "50% → 0%"


def test_table5_writes_huge_perplexities_in_words():
    by_relation = _by_relation().assign(erased_ppl_before=[69502.4, 20.0], erased_ppl_after=[11030288.2, 19.0])
    table = tables.table5(by_relation, erase=ERASE)
    assert table.loc[0, "ours: erased PPL before → after"] == "69,500 → 11 million"


def test_large_number_text_has_three_significant_figures_and_no_exponent():
    assert tables.large_number_text(8901748804435.32) == "8.9 trillion"
    assert tables.large_number_text(1764444855.56) == "1.76 billion"
    assert tables.large_number_text(-2_500_000.0) == "-2.5 million"
    assert tables.large_number_text(4.3e21) == "4,300,000 quadrillion"
    assert tables.large_number_text(497.72) == "498" and tables.large_number_text(-0.027) == "-0.027"
    assert tables.large_number_text(12836.93) == "12,800" and tables.large_number_text(-268339.9) == "-268,000"
    assert tables.large_number_text(999_999.0) == "1 million" and tables.large_number_text(4091.48) == "4,091"
    assert tables.large_number_text(float("inf")) == "∞" and tables.large_number_text(float("-inf")) == "-∞"
    assert tables.large_number_text(float("nan")) == "—" and tables.large_number_text(None) == "—"


def test_interval_text_shares_the_decimals_of_the_largest_number():
    assert tables.interval_text(-64.6, -81.04, -38.1) == "-64.6 [-81.0, -38.1]"
    assert tables.interval_text(57.5, 27.4, 109.8, signed=True) == "+58 [+27, +110]"  # 3 figures at most
    assert tables.interval_text(0.97, 0.92, 1.0) == "0.97 [0.92, 1.00]"
    assert tables.interval_text(3.6, -0.9, 10.0, signed=True) == "+3.6 [-0.9, +10.0]"
    assert tables.interval_text(20071.3, 8155.9, 42232.7) == "20,100 [8,200, 42,200]"
    assert tables.interval_text(2071.3, 815.9, 4232.7, signed=True) == "+2,071 [+816, +4,233]"
    assert tables.interval_text(-0.04, -0.5, 0.3) == "-0.040 [-0.500, 0.300]"
    assert tables.interval_text(-0.0001, -0.5, 0.3, signed=True) == "0.000 [-0.500, +0.300]"  # no "-0.000"
    assert tables.interval_text(5.0, float("nan"), float("nan")) == "5.00 [—, —]"
    assert tables.interval_text(0.0, 0.0, 0.0) == "0 [0, 0]"


def test_claim_table_puts_the_interval_in_one_cell():
    claims = pd.DataFrame({"model": ["m", "m"], "measure": ["success", "change"], "control": ["random-layer"] * 2,
                           "estimate": [28.2, 3.6], "ci_low": [13.6, -0.9], "ci_high": [56.2, 10.0], "n": [11, 11],
                           "unit": ["relations"] * 2, "verdict": ["beats its control", "does not beat its control"],
                           "expected": ["greater"] * 2}, index=[4, 7])  # a filtered frame's index
    out = tables.claim_table(claims, ["model", "measure", "control"])
    assert list(out.columns) == ["model", "measure", "control", "difference", "n", "verdict"]
    assert out["difference"].tolist() == ["+28.2 [+13.6, +56.2]", "+3.6 [-0.9, +10.0]"]
    assert out["n"].tolist() == [11, 11] and isinstance(out.index, pd.RangeIndex)


def test_update_outcomes_counts_each_edit_once_in_order():
    table = pd.DataFrame({"run": ["a", "a", "a", "b"], "success": [True, False, False, False],
                          "changed": [True, True, False, False]})
    counts = tables.update_outcomes(table).set_index(["run", "outcome"])["edits"]
    assert counts["a", "new answer (success)"] == 1 and counts["a", "other answer"] == 1
    assert counts["a", "unchanged"] == 1 and counts["b", "unchanged"] == 1
    assert counts["b", "new answer (success)"] == 0  # zero counts kept, so every bar has every outcome
    assert counts.groupby(level="run").sum().to_dict() == {"a": 3, "b": 1}
    assert list(dict.fromkeys(counts.index.get_level_values("outcome"))) == list(tables.UPDATE_OUTCOMES)


def test_erase_scopes_separates_every_fact_the_sample_and_the_others():
    import math

    from kn_lib.book.tables import erase_scopes

    table = pd.DataFrame({
        "erased_relation": ["P19"] * 4, "scope": ["erased", "erased", "erased", "other"],
        "fact_id": ["P19/0", "P19/1", "P19/2", "P36/0"], "in_sample": [True, False, False, False],
        "p_before": [0.5, 0.25, 0.25, 0.5], "p_after": [0.25, 0.25, 0.25, 0.5],
        "correct_before": [True, False, False, True], "correct_after": [False, False, False, True]})
    out = erase_scopes(table).set_index("prompts")
    assert out.loc["erased, sample", "ppl_change"] == 100.0  # 1/0.5 -> 1/0.25
    assert out.loc["erased, sample", "accuracy_before"] == 1.0 and out.loc["erased, sample", "accuracy_after"] == 0.0
    # every fact: PPL = exp(mean(-log p)) = (2 * 4 * 4) ** (1/3) before, 4 after
    assert math.isclose(out.loc["erased, all facts", "ppl_before"], 32 ** (1 / 3))
    assert out.loc["erased, all facts", "n_prompts"] == 3 and out.loc["other", "ppl_change"] == 0.0


def test_erase_scope_means_average_relations_not_prompts():
    from kn_lib.book.tables import erase_scope_means

    scopes = pd.DataFrame({
        "model": ["m"] * 4, "relation": ["P19", "P19", "P36", "P36"], "prompts": ["other", "erased, sample"] * 2,
        "n_prompts": [10, 2, 30, 4], "n_facts": [5, 1, 15, 2], "accuracy_before": [0.5, 1.0, 0.1, 0.5],
        "accuracy_after": [0.5, 0.0, 0.1, 0.5], "ppl_change": [0.0, 100.0, 10.0, 300.0]})
    out = erase_scope_means(scopes)
    assert out["prompts"].tolist() == ["erased, sample", "other"]  # the known facts first, as the chapter reads
    sample = out.iloc[0]
    assert (sample.n_relations, sample.n_prompts, sample.n_facts) == (2, 6, 3)
    assert sample.ppl_change == 200.0 and sample.accuracy_after == 0.25  # a mean of relations, not of prompts
    assert erase_scope_means(scopes.iloc[:0]).empty
    two = pd.concat([scopes.assign(model="z-first"), scopes], ignore_index=True)
    assert erase_scope_means(two)["model"].tolist() == ["z-first"] * 2 + ["m"] * 2  # models in the order given


def test_known_erase_scopes_says_how_far_an_unfinished_model_got(monkeypatch):
    import kn_lib.book as book
    from kn_lib.book.tables import known_erase_scopes
    from kn_lib.run import results

    table = pd.DataFrame({
        "method": ["ig", "ig", "random-layer"], "erased_relation": ["P19"] * 3, "scope": ["erased", "other", "erased"],
        "fact_id": ["P19/0", "P36/0", "P19/0"], "in_sample": [True, False, True], "p_before": [0.5] * 3,
        "p_after": [0.25, 0.5, 0.5], "correct_before": [True] * 3, "correct_after": [False, True, True]})

    class Sample:
        def __init__(self, model):
            self.model = model

        def load(self, stage, name):
            if self.model == "done":
                return table
            if self.model == "half":
                return pd.DataFrame()  # started, no shard finished: a table without columns
            if self.model == "empty":
                return pd.DataFrame()  # every shard finished, nothing to erase
            if self.model == "controls":
                return table[table["method"] == "random-layer"]
            raise results.ResultsNotFound(stage)

        def saved_units(self, stage):
            return {"ig": ["P159", "P27"]} if self.model == "half" else {}

        def manifest(self, stage):
            return {"shards": {"ig": {}} if self.model == "empty" else {}}

        committed = book.BookSample.committed  # the real rule, on this fake's results
        progress = book.BookSample.progress

    monkeypatch.setattr(book, "known_facts_sample", lambda model, size, params: Sample(model))
    scopes, lines = known_erase_scopes({"done": 8, "half": 8, "none": 8, "empty": 8, "controls": 8})
    assert set(scopes["model"]) == {"done"} and len(scopes) == 3  # the knowledge neurons' rows only
    assert scopes.set_index("prompts").loc["erased, sample", "ppl_change"] == 100.0
    assert lines == ["half: erase on known facts not finished; saved so far: ig 2 (P159, P27)",
                     "none: erase on known facts not run (or not finished)",
                     "empty: erase on known facts has no rows: nothing could be done (its skipped table says why)",
                     "controls: erase on known facts has no ig rows yet"]
