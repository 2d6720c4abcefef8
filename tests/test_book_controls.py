"""The book's knowledge-neuron-versus-control comparisons: per-unit reduction, pairing and verdicts by hand."""

import pandas as pd
import pytest

from kn_lib.book.claims import Interval
from kn_lib.book.controls import beats_control, control_claims, effect_text, effects, manipulation_by_fact


def _table():
    """Twelve facts of twelve relations (the resampled unit), two prompts each; suppressing the KNs halves p and loses the answer on one prompt,
    the random-layer control changes nothing, the activation-matched one lowers p by 10 %."""
    rows = []
    for i in range(12):
        for t in range(2):
            for method, factor in (("ig", 0.5), ("random-layer", 1.0), ("activation-matched", 0.9)):
                lost = method == "ig" and t == 0
                rows.append({"fact_id": f"P1/{i}", "relation": f"P{i + 1}", "scope": "own", "operation": "suppress", "n_kn": 2,
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
    assert change.n_unit == "relations"  # facts of a relation are correlated: relations are resampled
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


def _erase_table(with_flip: bool):
    """Ten erased relations, four prompts each, all answered before: the knowledge erasure takes away two
    answers per relation, the random-layer control none, the activation-matched one one."""
    rows = []
    for r in range(10):
        for t in range(4):
            for method, lost in (("ig", t < 2), ("random-layer", False), ("activation-matched", t == 0)):
                row = {"erased_relation": f"P{r}", "scope": "erased", "fact_id": f"P{r}/0", "relation": f"P{r}",
                       "template_id": t, "p_before": 0.5, "p_after": 0.1 if lost else 0.5, "correct_before": True,
                       "correct_after": not lost, "method": method}
                rows.append(row | ({"flip": lost} if with_flip else {}))
        for method in ("ig", "random-layer", "activation-matched"):  # one prompt of another relation, unchanged
            rows.append({**rows[-1], "scope": "other", "relation": "PX", "fact_id": "PX/0", "method": method,
                         "p_after": 0.5, "correct_after": True} | ({"flip": False} if with_flip else {}))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("with_flip", [True, False])  # stored before the flip column existed: derived the same way
def test_erase_correct_answers_lost_per_relation(with_flip):
    claims = control_claims({"m": {"erase": _erase_table(with_flip)}}, n_boot=200).set_index(["measure", "control"])
    lost = claims.loc[("correct answers lost", "random-layer")]
    assert lost.estimate == pytest.approx(50.0) and lost.n == 10 and lost.verdict == "beats its control"
    assert claims.loc[("correct answers lost", "activation-matched")].estimate == pytest.approx(25.0)
    assert claims.loc[("accuracy change", "random-layer")].estimate == pytest.approx(-50.0)


class _FakeSample:
    """What stored_control_tables reads of a committed sample, set by hand."""

    def __init__(self, table=None, shards=(), saved=None):
        self.table, self.shards, self.saved = table, shards, saved or {}

    def load(self, stage, table):
        from kn_lib.run import results

        if self.table is None:
            raise results.ResultsNotFound(stage)
        return self.table

    def manifest(self, stage):
        return {"shards": dict.fromkeys(self.shards, {})}

    def saved_units(self, stage):
        return self.saved

    def committed(self, stage, table="table"):  # the real rule, on the fake's results
        from kn_lib.book import BookSample

        return BookSample.committed(self, stage, table)

    def progress(self, stage):
        from kn_lib.book import BookSample

        return BookSample.progress(self, stage)


@pytest.mark.parametrize("sample,said", [
    (_FakeSample(), "m: erase on known facts not run (or not finished)"),
    (_FakeSample(pd.DataFrame(), saved={"ig": ["P159", "P27"]}), "m: erase on known facts not finished; saved so far: ig 2 (P159, P27)"),
    (_FakeSample(pd.DataFrame(), shards=("ig",)), "m: erase on known facts has no rows: nothing could be done (its skipped table says why)"),
    (_FakeSample(pd.DataFrame({"method": ["ig"]}), shards=("ig",)), "m: erase on known facts has no control rows yet (`kn erase` computes them)"),
    (_FakeSample(pd.DataFrame({"method": ["ig"]}), shards=("ig",), saved={"random-layer": ["P159"]}),
     "m: erase on known facts has no control rows yet (saved so far: random-layer 1 (P159))"),
])
def test_what_a_missing_control_run_says(monkeypatch, sample, said):
    import kn_lib.book as book
    from kn_lib.book.controls import stored_control_tables

    monkeypatch.setattr(book, "known_facts_sample", lambda model, size, params: sample)
    tables, missing = stored_control_tables({"m": {"erase": 8}})
    assert tables == {} and missing == [said]


def test_a_finished_control_is_compared_while_the_other_says_how_far_it_got(monkeypatch):
    import kn_lib.book as book
    from kn_lib.book.controls import stored_control_tables

    table = pd.DataFrame({"method": ["ig", "random-layer"]})
    sample = _FakeSample(table, shards=("ig", "random-layer"), saved={"activation-matched": ["P159", "P27"]})
    monkeypatch.setattr(book, "known_facts_sample", lambda model, size, params: sample)
    tables, missing = stored_control_tables({"m": {"erase": 8}})
    assert tables["m"]["erase"] is table
    assert missing == ["m: erase on known facts: controls not finished; saved so far: activation-matched 2 (P159, P27)"]


def test_erase_by_relation_gives_the_other_relations_scope_too():
    from kn_lib.book.controls import erase_by_relation

    rows = []
    for method, other_after in (("activation-matched", 0.5), ("ig", 0.25), ("random-layer", 0.5)):
        rows += [{"method": method, "erased_relation": "P19", "scope": "erased", "fact_id": "P19/0", "relation": "P19",
                  "template_id": 0, "p_before": 0.5, "p_after": 0.5, "correct_before": True, "correct_after": True},
                 {"method": method, "erased_relation": "P19", "scope": "other", "fact_id": "P36/0", "relation": "P36",
                  "template_id": 0, "p_before": 0.5, "p_after": other_after, "correct_before": True,
                  "correct_after": other_after == 0.5}]
    table = pd.DataFrame(rows)
    order = ["knowledge", "random-layer", "activation-matched"]  # knowledge first, then CONTROL_SETS' order
    assert erase_by_relation(table)["neuron_set"].tolist() == order
    own = erase_by_relation(table).set_index("neuron_set")
    other = erase_by_relation(table, scope="other").set_index("neuron_set")
    assert own.loc["knowledge", "ppl_change"] == 0.0 and own.loc["knowledge", "flip"] == 0.0
    assert other.loc["knowledge", "ppl_change"] == 100.0 and other.loc["knowledge", "flip"] == 100.0  # 1/0.5 -> 1/0.25
    assert other.loc["random-layer", "ppl_change"] == 0.0 and other.loc["random-layer", "accuracy_change"] == 0.0


def test_a_variant_control_run_is_read_under_its_own_options_and_named_in_tables():
    from kn_lib.book import KNOWN_OFFICIAL
    from kn_lib.book.controls import control_sample, definitions_of, with_definitions

    variant = control_sample("gemma3-270m", "update", 8)
    assert variant.params == KNOWN_OFFICIAL + (("selection", "ours"), ("sampling", "ours"))
    assert variant.facts_per_relation == 8 and variant.model == "gemma3-270m"
    assert control_sample("gemma3-270m", "erase", 8).params == KNOWN_OFFICIAL  # the official run
    assert control_sample("smollm2-135m", "update", 48).params == KNOWN_OFFICIAL
    claims = pd.DataFrame({"model": ["gemma3-270m", "gemma3-270m", "smollm2-135m"],
                           "intervention": ["update", "amplify", "update"], "estimate": [1.0, 2.0, 3.0]})
    named = with_definitions(claims)
    assert list(named.columns) == ["model", "intervention", "definitions", "estimate"]
    assert list(named["definitions"]) == ["ours: selection, sampling", "official", "official"]
    assert definitions_of("gemma3-270m", "suppress") == "official"
    assert "definitions" not in claims  # the given frame is left as it was


def test_control_definition_reads_the_committed_runs_whatever_was_loaded_first(monkeypatch):
    """On the committed results: SmolLM2's update has its non-KN run, Gemma's update does not; the answer
    does not depend on a page having loaded the tables first, and the words name each pool."""
    from kn_lib.book import controls

    monkeypatch.setattr(controls, "_USED", {})
    assert controls.control_definition("smollm2-135m", "update") == controls.NON_KN
    assert "any fact of the sample" in controls.control_pool_text("smollm2-135m", "update")
    assert "on the edited prompt" in controls.control_pool_text("smollm2-135m", "update")
    assert "over the fact's prompts" in controls.control_pool_text("smollm2-135m", "suppress")
    monkeypatch.setattr(controls, "_USED", {("gemma3-270m", "update"): controls.OWN_ONLY})
    words = controls.control_pool_text("gemma3-270m", "update")
    assert "closest in magnitude" in words and "another fact's" in words


def test_a_perplexity_comparison_needs_as_many_erased_relations_as_table_5():
    from kn_lib.book.claims import HEAVY_TAIL_MIN_CLUSTERS, MIN_CLUSTERS
    from kn_lib.book.controls import _min_clusters

    assert _min_clusters("erase", "perplexity change") == HEAVY_TAIL_MIN_CLUSTERS > MIN_CLUSTERS
    assert _min_clusters("erase", "accuracy change") == MIN_CLUSTERS
    ten = Interval(500.0, 200.0, 900.0, 10, 1000, 0.95, 0)
    assert beats_control(ten, +1) == "beats its control"
    assert beats_control(ten, +1, _min_clusters("erase", "perplexity change")) == "no data"
