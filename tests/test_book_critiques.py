"""The book's critiques chapter (``kn_lib.book.critiques``) on small tables built here with the columns the
experiments write: R^2 of edit success and the increment of localization, the own-layer and random-layer
comparisons, grammar suppression per group and against its controls, symmetry against its controls, by
hand; verdicts only from ``MIN_CLUSTERS`` units on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kn_lib.book.claims import MIN_CLUSTERS, Interval
from kn_lib.book.critiques import (
    GRAMMAR_MEASURES, LAYER_MATCHED, LOCALIZATIONS, OUTCOMES, RANDOM_LAYER, VERSUS_RANDOM, SYMMETRY_MEASURES, TOP_IG, by_layer, grammar_by_group, grammar_effects,
    interval_of, kn_layer_comparison, localization_fit, stored_critique_tables, symmetry_effects,
)
from kn_lib.experiments.controls import CONTROLS
from kn_lib.experiments.edit_localization import TABLE_COLUMNS as EDIT_COLUMNS
from kn_lib.experiments.grammar_neurons import TABLE_COLUMNS as GRAMMAR_COLUMNS
from kn_lib.experiments.symmetric_edits import TABLE_COLUMNS as SYMMETRY_COLUMNS

N_BOOT = 200
KN_MINUS = {c: f"knowledge − {c}" for c in CONTROLS}  # the paired rows' neuron_set


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """The experiment's table: its columns in its order (unset ones NaN) and the tags every table gets."""
    out = pd.DataFrame(rows).reindex(columns=columns)
    out["model"], out["method"], out["seed"] = "m", "ig", 0
    return out


# -- edit localization --------------------------------------------------------------------------------


def edit_row(fact: int, layer: int, neuron_set: str = TOP_IG, success: bool = False, mass_share: float = 0.25,
             delta_p_new: float = 0.0, kn_layer: int = 0) -> dict:
    return {"fact_id": f"P1/{fact}", "relation": "P1", "layer": layer, "neuron_set": neuron_set, "k": 2, "mass_share": mass_share,
            "is_kn_layer": layer == kn_layer, "n_kn_in_layer": 2 * (layer == kn_layer), "success": success,
            "delta_p_new": delta_p_new, "correct_before": True}


def planted_localization(n_facts: int = 30, n_layers: int = 4, seed: int = 0) -> pd.DataFrame:
    """Success follows the fact's attribution share *within* each layer (the edit works where the share is
    above even), rise of p(t') too; random-layer rows that would spoil the fit were they read."""
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_facts):
        share = rng.dirichlet(np.ones(n_layers))
        for layer in range(n_layers):
            rows.append(edit_row(f, layer, success=bool(share[layer] > 1 / n_layers), mass_share=float(share[layer]),
                                 delta_p_new=float(share[layer] + rng.normal(0, 0.02))))
            rows.append(edit_row(f, layer, RANDOM_LAYER, success=bool(rng.random() < 0.5), mass_share=float(share[layer]),
                                 delta_p_new=float(rng.normal())))
    return frame(rows, EDIT_COLUMNS)


def r2_of_layer_means(y: pd.Series, layers: pd.Series) -> float:
    """R^2 of layer fixed effects, by hand: 1 - within-layer SS / total SS."""
    y = y.astype(float)
    within = ((y - y.groupby(layers).transform("mean")) ** 2).sum()
    return 1 - within / ((y - y.mean()) ** 2).sum()


def test_localization_fit_finds_a_planted_localization():
    table = planted_localization()
    both = localization_fit(table, n_boot=N_BOOT)
    assert both[["outcome", "localization"]].apply(tuple, axis=1).tolist() == [
        (o, loc) for o in OUTCOMES.values() for loc in LOCALIZATIONS.values()]
    fit = both[both["localization"] == LOCALIZATIONS["mass_share"]].set_index("outcome")
    assert list(fit.columns) == ["localization", "r2_layer", "r2_layer_localization", "r2_increment", "ci_low", "ci_high",
                                 "n_facts", "n_rows"]
    top = table[table["neuron_set"] == TOP_IG]
    for column, label in OUTCOMES.items():
        row = fit.loc[label]
        assert row.n_facts == 30 and row.n_rows == 120  # top-ig rows only
        assert row.r2_layer == pytest.approx(r2_of_layer_means(top[column], top["layer"]))
        assert row.r2_increment == pytest.approx(row.r2_layer_localization - row.r2_layer)
        assert 0 < row.ci_low < row.ci_high, label  # localization adds, over resampled facts
    assert fit.loc[OUTCOMES["delta_p_new"], "r2_layer_localization"] > 0.9


def test_localization_fit_when_the_layer_explains_everything():
    rows = [edit_row(f, layer, success=layer >= 2, mass_share=float(np.random.default_rng(f * 10 + layer).random()),
                     delta_p_new=0.1 * layer) for f in range(12) for layer in range(4)]
    fit = localization_fit(frame(rows, EDIT_COLUMNS), n_boot=N_BOOT)
    assert fit["r2_layer"].tolist() == pytest.approx([1.0] * 4)
    assert fit["r2_increment"].tolist() == pytest.approx([0.0] * 4, abs=1e-9)
    assert fit["ci_low"].abs().max() < 1e-9 and fit["ci_high"].abs().max() < 1e-9


def test_by_layer_means_in_points_and_facts_counted_once():
    rows = [edit_row(0, 0, success=True, mass_share=0.6, delta_p_new=0.2), edit_row(1, 0, success=False, mass_share=0.2),
            edit_row(0, 1, success=False, mass_share=0.4), edit_row(1, 1, success=False, mass_share=0.8, delta_p_new=0.4),
            edit_row(0, 0, RANDOM_LAYER, success=False, mass_share=0.6)]
    out = by_layer(frame(rows, EDIT_COLUMNS)).set_index(["layer", "neuron_set"])
    assert out.loc[(0, TOP_IG), "success"] == pytest.approx(50.0) and out.loc[(0, TOP_IG), "n"] == 2
    assert out.loc[(0, TOP_IG), "mass_share"] == pytest.approx(0.4) and out.loc[(1, TOP_IG), "delta_p_new"] == pytest.approx(0.2)
    assert out.loc[(0, RANDOM_LAYER), "success"] == 0.0 and out.loc[(0, RANDOM_LAYER), "n"] == 1


def comparison_table(top: dict[int, list[int]], kn_layers: dict[int, int], random_at_kn: dict[int, int]) -> pd.DataFrame:
    """top-ig success per fact and layer; random-layer success at the kn layer (1 at every other layer, which
    neither comparison may read)."""
    rows = []
    for f, successes in top.items():
        for layer, success in enumerate(successes):
            rows.append(edit_row(f, layer, success=bool(success), kn_layer=kn_layers[f]))
            at_kn = layer == kn_layers[f]
            if f in random_at_kn:
                rows.append(edit_row(f, layer, RANDOM_LAYER, success=bool(random_at_kn[f]) if at_kn else True, kn_layer=kn_layers[f]))
    return frame(rows, EDIT_COLUMNS)


def test_kn_layer_comparison_by_hand():
    table = comparison_table(top={0: [0, 0, 1], 1: [1, 1, 0], 2: [0, 1, 1], 3: [0, 0, 0]}, kn_layers={0: 2, 1: 1, 2: 0, 3: 2},
                             random_at_kn={0: 0, 1: 1, 2: 0, 3: 0})
    out = kn_layer_comparison(table, n_boot=N_BOOT).set_index("comparison")
    own, versus = out.loc[LAYER_MATCHED], out.loc[VERSUS_RANDOM]
    # at the own layer, minus the other facts edited there whose layer is elsewhere (fact 3 shares fact 0's
    # layer 2, so neither counts for the other): 1 - 1/2, 1 - 1/3, 0 - 1/3, 0 - 1/2
    assert own.estimate == pytest.approx(100 * (1 / 2 + 2 / 3 - 1 / 3 - 1 / 2) / 4) and own.n == 4
    # at the kn layer, top-ig minus random-layer: 1 - 0, 1 - 1, 0 - 0, 0 - 0
    assert versus.estimate == pytest.approx(100 * 1 / 4) and versus.n == 4
    assert set(out["verdict"]) == {"no data"}  # 4 < MIN_CLUSTERS facts
    assert own.ci_low <= own.estimate <= own.ci_high


def test_the_layer_matched_contrast_is_not_fooled_by_depth():
    """Edits work in the top layers for every fact, whatever its knowledge-neuron layer; knowledge-neuron
    layers sit in the top layers too. A fact's own layer against its other layers then "wins" by depth
    alone; against the other facts edited at the same layer it does not."""
    from kn_lib.experiments.edit_localization_fit import kn_layer_advantage, layer_matched_advantage

    n, layers = 2 * MIN_CLUSTERS, 6
    top = {f: [int(layer >= 3) for layer in range(layers)] for f in range(n)}
    table = comparison_table(top, kn_layers={f: 3 + f % 3 for f in range(n)}, random_at_kn={})
    naive = kn_layer_advantage(table)
    assert naive["difference"].mean() == pytest.approx(1 - 2 / 5)  # 1 at its layer, 2 of 5 other layers work
    matched = layer_matched_advantage(table)
    assert len(matched) == n and matched["difference"].abs().max() == 0.0
    same = {layer: sum(3 + g % 3 == layer for g in range(n)) for layer in (3, 4, 5)}
    assert matched["n_others"].tolist() == [n - same[layer] for layer in matched["kn_layer"]]  # facts of other layers
    row = kn_layer_comparison(table, n_boot=N_BOOT).set_index("comparison").loc[LAYER_MATCHED]
    assert row.estimate == 0.0 and row.verdict == "does not beat its control"


def test_kn_layer_comparison_verdicts_from_enough_facts():
    n = MIN_CLUSTERS + 2
    top = {f: [int(layer == f % 3) if f % 6 else 1 for layer in range(3)] for f in range(n)}  # every 6th fact: all layers work
    table = comparison_table(top, kn_layers={f: f % 3 for f in range(n)}, random_at_kn={f: int(f < 2) for f in range(n)})
    out = kn_layer_comparison(table, n_boot=N_BOOT).set_index("comparison")
    own, versus = out.loc[LAYER_MATCHED], out.loc[VERSUS_RANDOM]
    # own layer 1; the other facts at it work only when all their layers do (facts 0 and 6, both at layer 0)
    assert own.estimate == pytest.approx(100 * (4 * 1 + 8 * (1 - 2 / 8)) / 12) and own.n == n and own.ci_low > 0
    assert versus.estimate == pytest.approx(100 * 10 / 12) and versus.ci_low > 0
    assert set(out["verdict"]) == {"beats its control"}
    # without the random control (--layer-controls no), only the second comparison has no data
    alone = kn_layer_comparison(table[table["neuron_set"] == TOP_IG], n_boot=N_BOOT).set_index("comparison")
    assert alone.loc[LAYER_MATCHED, "verdict"] == "beats its control"
    assert alone.loc[VERSUS_RANDOM, "n"] == 0
    assert alone.loc[VERSUS_RANDOM, "verdict"] == "no data"


# -- grammar ------------------------------------------------------------------------------------------


def pair_row(group: str, pair: int, neuron_set: str, before: bool, after: bool, p_before: float, p_after: float) -> dict:
    return {"paradigm": "dna", "group": group, "fact_id": f"dna/{group}", "pair_id": pair, "form": "one_prefix",
            "neuron_set": neuron_set, "n_neurons": 2, "score_before": 1.0 if before else -1.0,
            "score_after": 1.0 if after else -1.0, "correct_before": before, "correct_after": after,
            "flip": before and not after, "p_target_before": p_before, "p_target_after": p_after}


def test_grammar_by_group_by_hand():
    rows = [pair_row("this", 0, "knowledge", True, False, 0.5, 0.25), pair_row("this", 1, "knowledge", True, True, 0.4, 0.4),
            pair_row("this", 2, "knowledge", False, False, 0.2, 0.1)]
    rows += [{**r, "neuron_set": c, "correct_after": r["correct_before"], "flip": False, "p_target_after": r["p_target_before"]}
             for r in rows for c in CONTROLS]
    rows += [pair_row("these", 0, "knowledge", False, False, 0.1, 0.2)]  # no pair correct before: no flip rate
    out = grammar_by_group(frame(rows, GRAMMAR_COLUMNS)).set_index(["fact_id", "neuron_set"])
    kn = out.loc[("dna/this", "knowledge")]
    assert kn.accuracy_before == pytest.approx(200 / 3) and kn.accuracy_after == pytest.approx(100 / 3)
    assert kn.flip_rate == pytest.approx(50.0)  # 1 of the 2 pairs correct before
    assert kn.p_change == pytest.approx(100 * (0.75 / 3 - 1.1 / 3) / (1.1 / 3)) and kn.n_pairs == 3  # ratio of means
    for control in CONTROLS:
        row = out.loc[("dna/this", control)]
        assert (row.accuracy_after, row.flip_rate, row.p_change) == pytest.approx((200 / 3, 0.0, 0.0))
    assert np.isnan(out.loc[("dna/these", "knowledge"), "flip_rate"])
    assert out.loc[("dna/these", "knowledge"), "p_change"] == pytest.approx(100.0)


def grammar_table(n_groups: int, seed: int = 0) -> pd.DataFrame:
    """Per group 4 pairs, all correct before: the knowledge neurons lower p(target) by about 40 % and flip
    pair 0; the controls move p by a few percent either way and flip nothing."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for pair in range(4):
            p = float(rng.uniform(0.2, 0.8))
            rows.append(pair_row(f"g{g}", pair, "knowledge", True, pair != 0, p, p * float(rng.uniform(0.5, 0.7))))
            for control in CONTROLS:
                rows.append(pair_row(f"g{g}", pair, control, True, True, p, p * float(rng.uniform(0.95, 1.05))))
    return frame(rows, GRAMMAR_COLUMNS)


def test_grammar_effects_knowledge_beats_both_controls_over_enough_groups():
    table = grammar_table(MIN_CLUSTERS + 2)
    groups = grammar_by_group(table)
    out = grammar_effects(table, n_boot=N_BOOT).set_index(["measure", "neuron_set"])
    assert len(out) == len(GRAMMAR_MEASURES) * (1 + 2 * len(CONTROLS))
    for measure, label in GRAMMAR_MEASURES.items():
        for name in ("knowledge", *CONTROLS):  # each set: the mean over groups
            mean = groups.loc[groups["neuron_set"] == name, measure].mean()
            assert out.loc[(label, name), "estimate"] == pytest.approx(mean) and out.loc[(label, name), "verdict"] == ""
        for control in CONTROLS:
            row = out.loc[(label, KN_MINUS[control])]
            paired = (groups[groups["neuron_set"] == "knowledge"].set_index("fact_id")[measure]
                      - groups[groups["neuron_set"] == control].set_index("fact_id")[measure])
            assert row.estimate == pytest.approx(paired.mean()) and row.n == MIN_CLUSTERS + 2
            assert row.verdict == "beats its control", (label, control)
    assert out.loc[(GRAMMAR_MEASURES["flip_rate"], "knowledge"), "estimate"] == pytest.approx(25.0)
    assert out.loc[(GRAMMAR_MEASURES["p_change"], "knowledge"), "ci_high"] < -30


def test_grammar_effects_with_too_few_groups_or_the_effect_reversed():
    few = grammar_effects(grammar_table(MIN_CLUSTERS - 1), n_boot=N_BOOT)
    assert set(few.loc[few["neuron_set"].str.startswith("knowledge −"), "verdict"]) == {"no data"}
    swapped = grammar_table(MIN_CLUSTERS + 2)  # the controls did what the knowledge neurons did
    names = {"knowledge": CONTROLS[0], CONTROLS[0]: "knowledge"}
    swapped["neuron_set"] = swapped["neuron_set"].map(lambda s: names.get(s, s))
    out = grammar_effects(swapped, n_boot=N_BOOT).set_index(["measure", "neuron_set"])
    assert out.loc[(GRAMMAR_MEASURES["p_change"], KN_MINUS[CONTROLS[0]]), "verdict"] == "control stronger"
    assert out.loc[(GRAMMAR_MEASURES["p_change"], KN_MINUS[CONTROLS[1]]), "verdict"] == "does not beat its control"


# -- symmetry -----------------------------------------------------------------------------------------


def symmetry_row(fact: int, neuron_set: str, success: bool, reverse_before: float, reverse_after: float,
                 old_after: float = 1.0) -> dict:
    return {"fact_id": f"P47/{fact}", "relation": "P47", "reverse_relation": "P47", "neuron_set": neuron_set, "n_neurons": 2,
            "success": success, "new_reverse_before": reverse_before, "new_reverse_after": reverse_after,
            "old_reverse_before": 1.0, "old_reverse_after": old_after, "reverse_in_data": True}


def test_symmetry_effects_by_hand():
    rows = [symmetry_row(0, "knowledge", True, 0.0, 0.5, 0.5), symmetry_row(1, "knowledge", False, 0.0, 0.0),
            symmetry_row(2, "knowledge", True, 0.5, 1.0)]
    rows += [symmetry_row(f, control, False, before, before + 0.5 * (f == 2))
             for f, before in ((0, 0.0), (1, 0.0), (2, 0.5)) for control in CONTROLS]
    out = symmetry_effects(frame(rows, SYMMETRY_COLUMNS), n_boot=N_BOOT).set_index(["measure", "neuron_set"])
    assert len(out) == len(SYMMETRY_MEASURES) * 3 + 2 * len(CONTROLS)  # paired rows: success and the gain only
    label = SYMMETRY_MEASURES
    assert out.loc[(label["success"], "knowledge"), "estimate"] == pytest.approx(200 / 3)
    assert out.loc[(label["new_reverse_after"], "knowledge"), "estimate"] == pytest.approx(50.0)
    assert out.loc[(label["new_reverse_gain"], "knowledge"), "estimate"] == pytest.approx(100 / 3)
    assert out.loc[(label["old_reverse_after"], "knowledge"), "estimate"] == pytest.approx(250 / 3)
    gain = out.loc[(label["new_reverse_gain"], KN_MINUS[CONTROLS[0]])]
    assert gain.estimate == pytest.approx(100 * (0.5 + 0 + 0) / 3) and gain.n == 3 and gain.verdict == "no data"
    assert out.loc[(label["success"], KN_MINUS[CONTROLS[1]]), "estimate"] == pytest.approx(200 / 3)
    assert (label["old_reverse_after"], KN_MINUS[CONTROLS[0]]) not in out.index


def test_symmetry_a_reverse_that_follows_knowledge_edits_only_beats_its_controls():
    rng = np.random.default_rng(1)
    rows = []
    for f in range(MIN_CLUSTERS + 2):
        before = float(rng.choice([0.0, 0.25]))
        rows.append(symmetry_row(f, "knowledge", True, before, before + float(rng.choice([0.25, 0.5, 0.75]))))
        rows += [symmetry_row(f, control, bool(f == 0), before, before) for control in CONTROLS]
    out = symmetry_effects(frame(rows, SYMMETRY_COLUMNS), n_boot=N_BOOT)
    paired = out[out["neuron_set"].str.startswith("knowledge −")]
    assert len(paired) == 2 * len(CONTROLS) and set(paired["verdict"]) == {"beats its control"}
    assert set(paired["n"]) == {MIN_CLUSTERS + 2}
    gain = interval_of(out, measure=SYMMETRY_MEASURES["new_reverse_gain"], neuron_set="knowledge")
    assert gain.low > 0
    control = interval_of(out, measure=SYMMETRY_MEASURES["new_reverse_gain"], neuron_set=CONTROLS[0])
    assert (control.estimate, control.low, control.high) == (0.0, 0.0, 0.0)


def test_a_run_that_measured_nothing_gives_no_data_not_an_error():
    """Tables with no row, as a run writes them when every fact (group) was skipped: object columns."""
    fit = localization_fit(frame([], EDIT_COLUMNS), n_boot=N_BOOT)
    assert fit["r2_increment"].isna().all() and set(fit["n_facts"]) == {0}
    assert by_layer(frame([], EDIT_COLUMNS)).empty
    for out in (kn_layer_comparison(frame([], EDIT_COLUMNS), n_boot=N_BOOT), grammar_effects(frame([], GRAMMAR_COLUMNS), n_boot=N_BOOT),
                symmetry_effects(frame([], SYMMETRY_COLUMNS), n_boot=N_BOOT)):
        assert out["estimate"].isna().all() and set(out["n"]) == {0}
        assert set(out["verdict"]) <= {"", "no data"} and "no data" in set(out["verdict"])
    assert grammar_by_group(frame([], GRAMMAR_COLUMNS)).empty


# -- reading rows and committed tables ----------------------------------------------------------------


def test_interval_of_needs_exactly_one_row():
    out = symmetry_effects(frame([symmetry_row(f, s, True, 0.0, 0.5) for f in range(3) for s in ("knowledge", *CONTROLS)],
                                 SYMMETRY_COLUMNS), n_boot=N_BOOT)
    row = out[(out["measure"] == SYMMETRY_MEASURES["success"]) & (out["neuron_set"] == "knowledge")].iloc[0]
    got = interval_of(out, measure=SYMMETRY_MEASURES["success"], neuron_set="knowledge")
    assert isinstance(got, Interval)
    assert (got.estimate, got.low, got.high, got.n_clusters) == (row.estimate, row.ci_low, row.ci_high, 3)
    with pytest.raises(KeyError, match="5 rows match"):  # 3 sets and 2 paired differences
        interval_of(out, measure=SYMMETRY_MEASURES["success"])
    with pytest.raises(KeyError, match="0 rows match"):
        interval_of(out, measure="no such measure", neuron_set="knowledge")


def test_stored_critique_tables_says_what_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_DIR", str(tmp_path))  # an empty results root
    tables, missing = stored_critique_tables({"smollm2-135m": {"edit-localization": None, "symmetry": 48}})
    assert tables == {}
    assert missing == ["smollm2-135m: `kn edit-localization` on known facts not run", "smollm2-135m: `kn symmetry` on known facts not run",
                       "smollm2-135m: `kn symmetry --sign-aware yes` on known facts not run",
                       "smollm2-135m: `kn grammar --paradigms determiner-noun` not run",
                       "smollm2-135m: `kn grammar --paradigms subject-verb` not run"]


# -- the claims rows, the comparison with facts, the figure's rows ---------------------------------------


def test_symmetry_given_success_counts_only_knowledge_edits_that_succeeded():
    from kn_lib.book.critiques import symmetry_given_success

    rows = [symmetry_row(0, "knowledge", True, 0.0, 0.5), symmetry_row(1, "knowledge", True, 0.0, 0.0),
            symmetry_row(2, "knowledge", False, 0.0, 1.0), symmetry_row(3, CONTROLS[0], True, 0.0, 1.0)]
    ours = symmetry_given_success(frame(rows, SYMMETRY_COLUMNS), n_boot=N_BOOT)
    assert ours.estimate == pytest.approx(25.0) and ours.n_clusters == 2
    # an edit whose reverse the model never answered before cannot be asked to carry over: not testable
    rows[1] = {**rows[1], "old_reverse_before": 0.5}  # half its reverse prompts: not more than half
    assert symmetry_given_success(frame(rows, SYMMETRY_COLUMNS), n_boot=N_BOOT).n_clusters == 1
    assert symmetry_given_success(frame(rows, SYMMETRY_COLUMNS), n_boot=N_BOOT, testable=False).n_clusters == 2


def test_symmetry_reading_reads_right_in_every_branch():
    from kn_lib.book.critiques import symmetry_reading

    def iv(n, estimate=0.0):
        return Interval(estimate, estimate, estimate, n, N_BOOT, 0.95, 0)

    assert symmetry_reading(iv(0), iv(0)) == "no knowledge-neuron edit succeeded, so none can carry over to the reverse"
    one = symmetry_reading(iv(1), iv(0))
    assert one.startswith("1 knowledge-neuron edit succeeded, and afterwards the reverse holds on 0.0% [0.0, 0.0]")
    assert one.endswith("none of it before the edit: not testable")
    few = symmetry_reading(iv(4, 25.0), iv(2, 50.0))
    assert few.startswith("4 knowledge-neuron edits succeeded") and few.endswith("for only 2 of them: not testable")
    enough = symmetry_reading(iv(MIN_CLUSTERS + 3, 25.0), iv(MIN_CLUSTERS, 50.0))
    assert enough.endswith(f"; among the {MIN_CLUSTERS} whose reverse the model answered before, 50.0% [50.0, 50.0]")


def agreement_table(changes: dict[str, list[int]]) -> pd.DataFrame:
    """Paradigm -> per group, how many of its 4 pairs (all correct before) the knowledge neurons flip;
    the controls flip none."""
    rows = []
    for paradigm, flips in changes.items():
        for g, n_flip in enumerate(flips):
            for pair in range(4):
                base = {**pair_row(f"g{g}", pair, "knowledge", True, pair >= n_flip, 0.5, 0.5),
                        "paradigm": paradigm, "fact_id": f"{paradigm}/g{g}"}
                rows += [base] + [{**base, "neuron_set": c, "correct_after": True, "flip": False} for c in CONTROLS]
    return frame(rows, GRAMMAR_COLUMNS)


def test_grammar_accuracy_changes_count_a_rise_as_much_as_a_fall():
    from kn_lib.book.critiques import grammar_accuracy_changes

    table = agreement_table({"a": [1, 0]})
    table.loc[(table["fact_id"] == "a/g1") & (table["neuron_set"] == "knowledge") & (table["pair_id"] == 0),
              ["correct_before", "flip"]] = [False, False]  # wrong before, right after: a rise of 25 points
    out = grammar_accuracy_changes(table).set_index("fact_id")
    assert out.loc["a/g0", "change"] == pytest.approx(-25.0) and out.loc["a/g1", "change"] == pytest.approx(25.0)
    assert out["size"].tolist() == pytest.approx([25.0, 25.0]) and set(out["paradigm"]) == {"a"}


def test_critique_claims_judge_each_finding_by_its_rule(monkeypatch):
    from kn_lib.book import critiques
    from kn_lib.book.paper import critic_value

    # localization that adds nothing beyond the layer (success follows the layer only): the ceiling holds
    edits = frame([edit_row(f, layer, success=layer == 1, mass_share=float(np.random.default_rng(f).random()))
                   for f in range(MIN_CLUSTERS + 5) for layer in range(3)], EDIT_COLUMNS)
    # agreement: 8 determiner-noun paradigms that lose 25 points in each group (DNA.2 among them), and
    # 4 subject-verb paradigms that lose none: the mean over the 26 groups of 12 paradigms, 18 x 25 / 26 points
    determiner = agreement_table({critiques.DNA2: [1, 1, 1, 1], **{f"dn{i}": [1, 1] for i in range(7)}})
    subject_verb = agreement_table({f"sv{i}": [0, 0] for i in range(4)})
    # symmetry: three successful knowledge edits only (too few for a verdict)
    symmetry = frame([symmetry_row(f, "knowledge", f < 3, 0.0, 0.0) for f in range(MIN_CLUSTERS + 2)], SYMMETRY_COLUMNS)
    tables = {"m": {"edit-localization": edits, "grammar": determiner, critiques.SUBJECT_VERB: subject_verb,
                    "symmetry": symmetry}}
    out = critiques.critique_claims(tables, n_boot=N_BOOT)
    assert list(out["model"]) == ["m"] * 5 and set(out["kind"]) == {critiques.CRITIQUE} and set(out["test"]) == {"ceiling"}
    out = out.set_index("claim")
    local = out.loc["localization adds at most this to the layer's R^2 of edit success"]
    assert local.paper == critic_value("hase_max_added_r2") and local.test == "ceiling"
    assert local.ours == pytest.approx(0.0, abs=1e-9) and local.verdict == "within ceiling"
    start = "zeroing agreement neurons changes BLiMP accuracy by at most this many points"
    every = out.loc[f"{start} (12 agreement paradigms)"]
    assert every.paper == pytest.approx(5.2) and every.n_clusters == 12
    assert every.ours == pytest.approx(18 * 25 / 26) and every.verdict == "exceeded"
    determiners = out.loc[f"{start} (8 determiner-noun paradigms)"]
    assert determiners.ours == pytest.approx(25.0) and determiners.n_clusters == 8 and determiners.verdict == "no data"
    dna2 = out.loc[f"{start} (DNA.2)"]
    assert dna2.ours == pytest.approx(25.0) and dna2.n_clusters == 4 and dna2.verdict == "no data"
    reverse = out.loc["after a successful edit the reverse fact holds at most as often as for ROME"]
    assert reverse.n_clusters == 3 and reverse.verdict == "no data"
    assert reverse.note.startswith("not testable: ") and "3 successful edits" in reverse.note
    # without the subject-verb run, no 12-paradigm row
    del tables["m"][critiques.SUBJECT_VERB]
    assert not critiques.critique_claims(tables, n_boot=N_BOOT)["claim"].str.contains("agreement paradigms").any()


def test_grammar_vs_facts_and_control_effect_rows():
    from kn_lib.book.critiques import as_control_effects, grammar_vs_facts

    grammar = grammar_table(MIN_CLUSTERS + 2)
    versus = grammar_vs_facts(grammar, None, "m", n_boot=N_BOOT)
    assert set(versus["what"]) == {"agreement (BLiMP groups)"} and set(versus["neuron_set"]) == {"knowledge", "activation-matched"}
    lost = versus[(versus["measure"] == "correct answers lost") & (versus["neuron_set"] == "knowledge")].iloc[0]
    assert lost.estimate == pytest.approx(25.0) and lost.n == MIN_CLUSTERS + 2
    shown = as_control_effects(grammar_effects(grammar, n_boot=N_BOOT), "m: suppress", "%", "groups")
    assert set(shown["neuron_set"]) == {"knowledge", *CONTROLS}  # the paired rows are not bars
    assert set(shown["intervention"]) == {"m: suppress"} and set(shown["n_unit"]) == {"groups"}


def test_with_interval_puts_the_interval_in_one_cell_where_the_estimate_was():
    from kn_lib.book import plots
    from kn_lib.book.critiques import INTERVAL, with_interval

    effects = pd.DataFrame({"measure": ["p", "flips"], "estimate": [-64.62, 2.0], "ci_low": [-81.04, np.nan],
                            "ci_high": [-38.11, np.nan], "n": [12, 3], "unit": ["groups", "facts"], "verdict": ["", "no data"]},
                           index=[5, 7])
    out = with_interval(effects)
    assert list(out.columns) == ["measure", INTERVAL, "n", "unit", "verdict"] and isinstance(out.index, pd.RangeIndex)
    assert out[INTERVAL].tolist() == ["-64.6 [-81.0, -38.1]", "2.00 [—, —]"]
    signed = with_interval(effects, signed=True, column="difference", n_unit="unit")
    assert list(signed.columns) == ["measure", "difference", "n", "verdict"]
    assert signed["difference"].tolist()[1] == "+2.00 [—, —]" and signed["n"].tolist() == ["12 groups", "3 facts"]
    assert effects.columns.tolist()[1:4] == ["estimate", "ci_low", "ci_high"]  # the effects table is unchanged
    plots.shown(signed).to_html()  # fits a page: at most 7 columns, no index
