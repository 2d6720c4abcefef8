"""Localization vs editing (Hase et al. 2023 for knowledge neurons): the experiment on tiny models (weights
restored, one row per fact x layer x set, the top-k by score edited), and its regressions on planted
tables (localization that drives success, and one that does not) and by hand."""

import numpy as np
import pandas as pd
import pytest
import torch

from kn_lib.attribution import IGConfig, integrated_gradients_many
from kn_lib.experiments.edit_localization import (
    EditLocalizationConfig, edit_localization, kn_layer_advantage, layer_r2, localization, r2_increment_interval,
)
from kn_lib.experiments.evaluation import answer_distribution
from kn_lib.experiments.interventions import edited_value_slots, updated_value_slots
from tiny_facts import FACTS, RELATIONS, refined_table

pytestmark = pytest.mark.usefixtures("one_thread")

KNS = {"P19/0": [(1, 3), (2, 7)], "P19/1": [(2, 7)], "P36/0": [(0, 11), (2, 40), (2, 41)]}
CONFIG = EditLocalizationConfig(ig=IGConfig(steps=4), require_correct=False)
FACT = {f["fact_id"]: f for f in FACTS}


def _prompt(adapter, row):
    fact = FACT[row.fact_id]
    return adapter.encode(RELATIONS[row.relation].templates[row.template_id], fact["subject"], fact["object"])


def test_every_layer_is_edited_with_its_top_k_and_the_model_is_restored(tiny):
    before = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    calls = []
    result = edit_localization(tiny, refined_table(KNS), FACTS, RELATIONS, CONFIG, progress=calls.append)
    assert all(torch.equal(before[name], p) for name, p in tiny.model.named_parameters())
    assert sum(calls) == len(FACTS)
    t = result.table
    assert sorted(set(t["fact_id"])) == sorted(KNS) and len(t) == len(KNS) * tiny.n_layers * 2
    assert not t.duplicated(["fact_id", "layer", "neuron_set"]).any()
    assert {"model", "method", "seed"} <= set(t.columns) and {"model", "method", "seed"} <= set(result.facts.columns)
    assert (t["k"] == t["fact_id"].map(lambda f: len(KNS[f]))).all() and (t["neurons"].map(len) == t["k"]).all()
    for fact_id, rows in t[t.neuron_set == "top-ig"].groupby("fact_id"):
        assert rows["mass_share"].sum() == pytest.approx(1.0) and rows["is_kn_layer"].sum() == 1
        assert list(rows["n_kn_in_layer"]) == [sum(l == layer for l, _ in KNS[fact_id]) for layer in rows["layer"]]
        scores = integrated_gradients_many(tiny, [_prompt(tiny, rows.iloc[0])], config=CONFIG.ig)[0]
        for row in rows.itertuples():
            chosen = [i for l, i in row.neurons]
            assert all(l == row.layer for l, _ in row.neurons) and len(set(chosen)) == row.k
            rest = [j for j in range(tiny.n_neurons) if j not in chosen]
            assert float(scores[row.layer, chosen].min()) >= float(scores[row.layer, rest].max()) - 1e-6
        fact_row = result.facts.set_index("fact_id").loc[fact_id]
        assert fact_row.kn_layer == int(rows[rows.is_kn_layer].layer.iloc[0])
        assert fact_row.peak_layer == int(rows.loc[rows.mass_share.idxmax(), "layer"])
    for row in t[t.neuron_set == "random-layer"].itertuples():  # same layer, never a KN or a top-ig neuron
        top = t[(t.fact_id == row.fact_id) & (t.layer == row.layer) & (t.neuron_set == "top-ig")].neurons.iloc[0]
        assert all(l == row.layer for l, _ in row.neurons)
        assert not {tuple(n) for n in row.neurons} & (set(KNS[row.fact_id]) | {tuple(n) for n in top})
    # the recorded outcome is the edit's: redo one edit by hand
    row = t.iloc[-1]
    prompt = _prompt(tiny, row)
    new_id = tiny.answer_token(row.new_object, RELATIONS[row.relation].templates[row.template_id])
    assert row.new_object != row.old_object
    with edited_value_slots(tiny, updated_value_slots(tiny, [tuple(n) for n in row.neurons], prompt.target_id, new_id)):
        after = answer_distribution(tiny, prompt)
    assert row.p_new_after == pytest.approx(float(after[new_id]), abs=1e-6)
    assert row.success == (int(after.argmax()) == new_id) and row.flip == (int(after.argmax()) != prompt.target_id)
    # a fact's draws do not depend on the other facts of the run
    alone = edit_localization(tiny, refined_table({"P36/0": KNS["P36/0"]}), [FACT["P36/0"]], RELATIONS, CONFIG,
                              population=FACTS).table
    mine = t[t.fact_id == "P36/0"].reset_index(drop=True)
    assert alone[["template_id", "new_object", "neurons", "success"]].equals(mine[["template_id", "new_object", "neurons", "success"]])
    s = result.summary
    assert (s.model, s.method, s.n_facts, s.n_layers) == ("tiny", "hand", len(KNS), tiny.n_layers)


def test_skips_name_every_fact_not_edited(tiny_llama):
    result = edit_localization(tiny_llama, refined_table({"P19/0": KNS["P19/0"], "P19/3": [(1, 1)]}), FACTS, RELATIONS,
                               EditLocalizationConfig(ig=IGConfig(steps=4), require_correct=False, controls=False))
    skipped = result.skipped
    assert set(result.table["neuron_set"]) == {"top-ig"} and set(result.table["fact_id"]) == {"P19/0"}
    no_kn = skipped[skipped.reason.str.contains("no knowledge neurons")]
    assert set(no_kn["fact_id"]) == {f["fact_id"] for f in FACTS} - {"P19/0", "P19/3"}
    assert "P19/3" in set(skipped[skipped.reason.str.contains("multi-token")]["fact_id"])  # two-token object
    strict = edit_localization(tiny_llama, refined_table(KNS), FACTS, RELATIONS, EditLocalizationConfig(ig=IGConfig(steps=4)))
    wrong = strict.skipped[strict.skipped.reason.str.contains("answers none")]
    for fact_id in KNS:  # edited on a prompt it answers correctly, or none answered correctly (and said)
        prompts = [tiny_llama.encode(t, FACT[fact_id]["subject"], FACT[fact_id]["object"])
                   for t in RELATIONS[fact_id.split("/")[0]].templates if t.index("[X]") < t.index("[Y]")]
        correct = any(int(answer_distribution(tiny_llama, p).argmax()) == p.target_id for p in prompts)
        rows = strict.table[strict.table.fact_id == fact_id]
        assert (rows["correct_before"].all() and len(rows)) if correct else (fact_id in set(wrong["fact_id"]) and rows.empty)


def test_random_controls_avoid_knowledge_neurons_or_say_why(tiny_llama):
    many = {"P19/0": [(1, j) for j in range(14)], "P19/1": [(2, j) for j in range(30)]}
    result = edit_localization(tiny_llama, refined_table(many), FACTS, RELATIONS, CONFIG)
    control = result.table[result.table.neuron_set == "random-layer"]
    # 14 KNs in layer 1: its control draws 14 of the at least 20 neurons that are neither KN nor top-ig
    assert set(control["fact_id"]) == {"P19/0"} and len(control) == tiny_llama.n_layers
    assert all(not {tuple(n) for n in ns} & set(many["P19/0"]) for ns in control["neurons"])
    # k = 30 of 48 neurons: no layer has 30 neurons outside its top 30, so no control, each layer said
    said = result.skipped[(result.skipped.fact_id == "P19/1") & result.skipped.reason.str.contains("random-layer")]
    assert sorted(said["item"]) == [f"layer {l}" for l in range(tiny_llama.n_layers)]
    assert (result.table[result.table.fact_id == "P19/1"]["neuron_set"] == "top-ig").sum() == tiny_llama.n_layers


def test_localization_by_hand():
    scores = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.5, -1.0], [0.5, 0.0, 0.0]])
    share, counts, kn_layer = localization(scores, [(2, 0), (2, 1), (0, 0), (0, 2)])
    assert share == pytest.approx([1 / 5, 3.5 / 5, 0.5 / 5]) and counts == [2, 0, 2]
    assert kn_layer == 0  # two KNs in layers 0 and 2: the tie goes to the larger mass share


def _planted(n_facts, n_layers, seed, driven):
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_facts):
        for layer in range(n_layers):
            share = rng.uniform()
            success = share > 0.5 if driven else rng.uniform() < (0.1 + 0.25 * layer)
            rows.append({"fact_id": f"R/{f}", "relation": "R", "layer": layer, "neuron_set": "top-ig",
                         "mass_share": share, "success": bool(success), "is_kn_layer": layer == f % n_layers})
            rows.append({**rows[-1], "neuron_set": "random-layer", "success": True})  # must be ignored
    return pd.DataFrame(rows)


def test_localization_that_drives_success_is_found():
    table = _planted(60, 4, seed=1, driven=True)
    fit = layer_r2(table)
    assert fit["n_rows"] == 240 and fit["n_facts"] == 60
    assert fit["r2_increment"] > 0.3 and fit["r2_layer"] < 0.1
    estimate, low, high = r2_increment_interval(table, n_boot=200, seed=0)
    assert estimate == pytest.approx(fit["r2_increment"]) and 0 < low <= estimate <= high


def test_localization_unrelated_to_success_adds_nothing():
    table = _planted(300, 4, seed=2, driven=False)
    fit = layer_r2(table)
    assert fit["r2_layer"] > 0.2 and 0 <= fit["r2_increment"] < 0.02
    estimate, low, high = r2_increment_interval(table, n_boot=100, seed=0)
    assert low < 0.02


def test_r2_by_hand_on_two_layers():
    y0, y1 = np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0])
    loc0, loc1 = np.array([0.9, 0.2, 0.1]), np.array([0.6, 0.5, 0.3])
    table = pd.DataFrame({"fact_id": ["a", "b", "c"] * 2, "relation": "R", "layer": [0] * 3 + [1] * 3,
                          "success": np.concatenate([y0, y1]).astype(bool), "mass_share": np.concatenate([loc0, loc1]),
                          "is_kn_layer": [True, False, True, False, True, False]})
    fit = layer_r2(table)
    # layer means 1/3 and 2/3, grand mean 1/2: SS_res = 4/3, SS_tot = 3/2, R^2 = 1/9
    assert fit["r2_layer"] == pytest.approx(1 / 9)
    # with the localization: within-layer deviations (Frisch-Waugh), one slope through the origin
    dy = np.concatenate([y0 - y0.mean(), y1 - y1.mean()])
    dl = np.concatenate([loc0 - loc0.mean(), loc1 - loc1.mean()])
    ss_res = ((dy - (dy @ dl / (dl @ dl)) * dl) ** 2).sum()
    assert fit["r2_layer_localization"] == pytest.approx(1 - ss_res / 1.5)
    assert fit["r2_increment"] == pytest.approx(fit["r2_layer_localization"] - 1 / 9)
    adv = kn_layer_advantage(table).set_index("fact_id")
    assert adv.loc["a", "kn_layer"] == 0 and adv.loc["a", "difference"] == 0.0  # 1 at layer 0, 1 at layer 1
    assert adv.loc["b", "kn_layer"] == 1 and adv.loc["b", "difference"] == 1.0
    assert adv.loc["c", "at_kn_layer"] == 0.0 and adv.loc["c", "other_layers"] == 0.0
