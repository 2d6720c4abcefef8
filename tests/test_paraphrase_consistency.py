"""Paraphrase consistency of a fact's neurons, worked by hand."""

import math

import pandas as pd
import pytest

from kn_lib.experiments.paraphrase_consistency import jaccard, pairwise_jaccard, paraphrase_consistency


def test_jaccard_and_its_pairwise_mean():
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3) and math.isnan(jaccard(set(), set()))
    # pairs: {1,2}-{2,3}: 1/3; {1,2}-{}: 0; {2,3}-{}: 0; -> 1/9
    assert pairwise_jaccard([{1, 2}, {2, 3}, set()]) == pytest.approx(1 / 9)
    assert pairwise_jaccard([set(), set(), {1}]) == pytest.approx(0.0)  # the empty pair is left out
    assert math.isnan(pairwise_jaccard([{1}]))


def test_by_fact_and_by_neuron():
    prompts = pd.DataFrame({"fact_id": ["a"] * 3 + ["b"] * 2, "relation": ["P1"] * 5, "template_id": [0, 1, 2, 0, 1]})
    coarse = pd.DataFrame([  # a: {x, y}, {y}, {} ; b: {x}, {z}
        ("a", 0, 5, 1), ("a", 0, 5, 2), ("a", 1, 5, 2), ("b", 0, 5, 1), ("b", 1, 6, 9),
    ], columns=["fact_id", "template_id", "layer", "neuron"])
    refined = pd.DataFrame({"fact_id": ["a"], "layer": [5], "neuron": [2]})
    result = paraphrase_consistency(coarse, prompts, refined)
    a, b = result.by_fact.set_index("fact_id").loc["a"], result.by_fact.set_index("fact_id").loc["b"]
    assert a.n_prompts == 3 and a.mean_jaccard == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert (a.n_shared, a.n_in_all, a.shares_none, a.n_refined) == (1, 0, False, 1)
    assert (b.mean_jaccard, b.n_shared, b.shares_none, b.n_refined) == (0.0, 0, True, 0)  # flagged: nothing shared
    neuron = result.by_neuron.iloc[0]
    assert (neuron.fact_id, neuron.layer, neuron.neuron, neuron.n_holding) == ("a", 5, 2, 2)
    assert neuron.share == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="lacks columns"):
        paraphrase_consistency(coarse.drop(columns="layer"), prompts, refined)
