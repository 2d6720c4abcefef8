"""Matched controls (issue: "is it the neurons?"): selection rules by hand, on tiny models, and a planted
neuron that carries the answer beating both controls; changed predictions (flips) beside probabilities."""

from collections import Counter

import pytest
import torch

from kn_lib.experiments import ManipulationConfig, suppress_and_amplify
from kn_lib.experiments.controls import (
    CONTROLS, activation_matched, activation_matched_neurons, control_table, layer_matched, layer_matched_neurons,
    mean_answer_activations,
)
from kn_lib.experiments.evaluation import FactPrompts, SkipLog, answer_distribution, seeded_rng
from kn_lib.experiments.interventions import value_slot
from kn_lib.experiments.suppress_amplify import flipped
from tiny_facts import FACTS, RELATIONS, refined_table

KNS = {"P19/0": [(1, 3), (2, 7)], "P19/1": [(2, 7)], "P36/0": [(0, 11), (2, 40), (2, 41)], "P36/2": [(1, 3)]}


def _sets(table):
    out = {}
    for f, l, n in zip(table["fact_id"], table["layer"], table["neuron"]):
        out.setdefault(f, []).append((int(l), int(n)))
    return out


def test_layer_matched_keeps_layers_avoids_kns_and_is_seeded():
    refined = refined_table(KNS)
    a, b, other = layer_matched(refined, 64, seed=3), layer_matched(refined, 64, seed=3), layer_matched(refined, 64, seed=4)
    assert a.equals(b) and not a[["layer", "neuron"]].equals(other[["layer", "neuron"]])
    assert set(a["method"]) == {"random-layer"}
    for fact, kns in KNS.items():
        got = _sets(a)[fact]
        assert Counter(l for l, _ in got) == Counter(l for l, _ in kns)  # same count per layer
        assert not set(got) & set(kns) and len(set(got)) == len(got)  # disjoint from the fact's KNs, distinct
    # a fact's draw does not depend on the other facts of the run
    alone = layer_matched(refined_table({"P36/0": KNS["P36/0"]}), 64, seed=3)
    assert _sets(alone)["P36/0"] == _sets(a)["P36/0"]


def test_layer_matched_respects_exclusions_and_fails_on_a_full_layer():
    rng = seeded_rng(0, "x")
    got = layer_matched_neurons([(0, 0)], 3, rng, exclude=[(0, 1)])
    assert got == [(0, 2)]  # the only neuron of layer 0 left
    with pytest.raises(ValueError, match="no neuron left"):
        layer_matched_neurons([(0, 0), (0, 1)], 3, rng, exclude=[(0, 2)])


def test_activation_match_picks_the_nearest_magnitude_by_hand():
    acts = torch.tensor([[0.125, 0.5, -0.4375, 0.625, 0.375],  # binary fractions: the gaps are exact
                         [2.0, -1.0, 0.875, 1.125, 0.0]])
    # |a| of layer 0: .125 .5 .4375 .625 .375; the KN (0, 1) has .5: nearest .4375 (index 2, gap .0625)
    assert activation_matched_neurons([(0, 1)], acts) == [(0, 2)]
    # excluded, then the next nearest: .625 and .375 are both .125 away, the tie goes to the lower index
    assert activation_matched_neurons([(0, 1)], acts, exclude=[(0, 2)]) == [(0, 3)]
    # two KNs of a layer never share a match, and no KN is a match: |-1| -> .875 (tie with 1.125, a KN);
    # then 1.125 -> 2.0 (gap .875) rather than 0.0 (1.125)
    assert activation_matched_neurons([(1, 1), (1, 3)], acts) == [(1, 2), (1, 0)]
    # the other order: 1.125 -> .875 (gap .25), then 1.0 -> 2.0 or 0.0 (both 1.0 away): index 0
    assert activation_matched_neurons([(1, 3), (1, 1)], acts) == [(1, 2), (1, 0)]


def test_control_tables_on_a_tiny_model(tiny_llama):
    refined = refined_table(KNS)
    matched = activation_matched(tiny_llama, refined, FACTS, RELATIONS)
    assert set(matched["method"]) == {"activation-matched"}
    prompts = FactPrompts(tiny_llama, FACTS, RELATIONS, SkipLog("t"))
    for fact, kns in KNS.items():
        got = _sets(matched)[fact]
        assert [l for l, _ in got] == [l for l, _ in kns] and not set(got) & set(kns)
        acts = mean_answer_activations(tiny_llama, prompts, [fact])
        assert got == activation_matched_neurons(kns, acts)
        for (layer, kn), (_, ctrl) in zip(kns, got):  # nothing of the layer outside the KNs is closer
            gap = abs(acts[layer, ctrl].abs() - acts[layer, kn].abs())
            others = [j for j in range(tiny_llama.n_neurons) if (layer, j) not in set(kns) | set(got)]
            assert all(abs(acts[layer, j].abs() - acts[layer, kn].abs()) >= gap - 1e-7 for j in others)
    for kind in CONTROLS:
        assert set(control_table(kind, tiny_llama, refined, FACTS, RELATIONS)["method"]) == {kind}
    with pytest.raises(ValueError, match="unknown control"):
        control_table("uniform", tiny_llama, refined, FACTS, RELATIONS)


def test_flip_directions():
    assert flipped("suppress", True, False) and not flipped("suppress", False, False) and not flipped("suppress", True, True)
    assert flipped("amplify", False, True) and not flipped("amplify", True, True) and not flipped("amplify", False, False)
    with pytest.raises(ValueError):
        flipped("erase", True, False)


def test_flip_columns_follow_the_top1_answers(tiny_llama):
    result = suppress_and_amplify(tiny_llama, refined_table(KNS), FACTS, RELATIONS, ManipulationConfig(unrelated=False))
    t = result.table
    assert {"correct_before", "correct_after", "flip"} <= set(t.columns)
    assert (t["flip"] == [flipped(o, b, a) for o, b, a in zip(t.operation, t.correct_before, t.correct_after)]).all()
    row = t.iloc[0]
    prompt = tiny_llama.encode(RELATIONS[row.relation].templates[row.template_id],
                               *next((f["subject"], f["object"]) for f in FACTS if f["fact_id"] == row.eval_fact_id))
    assert row.correct_before == (int(answer_distribution(tiny_llama, prompt).argmax()) == prompt.target_id)
    assert {"n_flip_eligible", "flip_rate"} <= set(result.by_relation.columns)
    legacy = suppress_and_amplify(tiny_llama, refined_table(KNS), FACTS, RELATIONS, ManipulationConfig(unrelated=False, flips=False))
    assert "flip" not in legacy.table.columns and "flip_rate" not in legacy.by_relation.columns


def test_a_planted_answer_neuron_beats_both_controls(tiny_llama):
    """Plant one neuron of the last layer that writes the answer of P19/0 into the residual stream (its value
    slot along the answer's unembedding, scaled by its activation's sign). Suppressing it must lower
    p(answer) far more than suppressing its layer-matched or activation-matched control, and flip the
    answer it made correct."""
    fact = next(f for f in FACTS if f["fact_id"] == "P19/0")
    prompts = FactPrompts(tiny_llama, [fact], RELATIONS, SkipLog("t")).of("P19/0")
    layer = tiny_llama.n_layers - 1
    acts = mean_answer_activations(tiny_llama, FactPrompts(tiny_llama, [fact], RELATIONS, SkipLog("t")), ["P19/0"])
    index = int(acts[layer].abs().argmax())
    target = prompts[0].encoded.target_id
    unembedding = tiny_llama.model.get_output_embeddings().weight[target].detach()
    slot = value_slot(tiny_llama.projections[layer], index)
    saved = slot.detach().clone()
    try:
        with torch.no_grad():
            slot.copy_(torch.sign(acts[layer, index]) * 50.0 * unembedding / unembedding.norm() / acts[layer, index].abs())
        assert all(int(answer_distribution(tiny_llama, p.encoded).argmax()) == target for p in prompts)
        planted = refined_table({"P19/0": [(layer, index)]})
        config = ManipulationConfig(unrelated=False)
        results = {"knowledge": suppress_and_amplify(tiny_llama, planted, [fact], RELATIONS, config)}
        for kind in CONTROLS:
            results[kind] = suppress_and_amplify(tiny_llama, control_table(kind, tiny_llama, planted, [fact], RELATIONS),
                                                 [fact], RELATIONS, config)
    finally:
        with torch.no_grad():
            slot.copy_(saved)
    drop = {k: r.summary.suppress_own for k, r in results.items()}
    # (a tiny random model's final norm caps p(answer) near 1/30: the planted neuron makes it top-1, and
    # suppressing it takes away about 40 % of it; its controls change it by well under 1 %)
    assert drop["knowledge"] < -25 and all(drop["knowledge"] < drop[k] - 20 for k in CONTROLS), drop
    flips = {k: r.table.query("operation == 'suppress'")["flip"].mean() for k, r in results.items()}
    assert flips["knowledge"] > 0.5 and all(flips[k] < flips["knowledge"] for k in CONTROLS), flips
