"""The shared measures and bookkeeping of the experiments: perplexity, change ratio, neuron sets, seeds."""

import math
import random

import pandas as pd
import pytest

from kn_lib.experiments import change_ratio, perplexity, random_like
from kn_lib.experiments.evaluation import FactPrompts, SkipLog, seeded_rng
from kn_lib.experiments.neuron_sets import most_frequent, neurons_by_fact, random_neurons
from tiny_facts import FACTS, RELATIONS, refined_table
from real_model import single_thread  # noqa: F401 (autouse fixture: one torch thread)


def test_perplexity_hand_computed():
    # p = 1/2 and 1/8: mean log(1/p) = (log 2 + log 8) / 2 = 2 log 2, so PPL = 4
    assert perplexity([0.5, 0.125]) == pytest.approx(4.0, rel=1e-12)
    assert perplexity([0.25]) == pytest.approx(4.0, rel=1e-12)  # one prompt: 1 / p
    assert perplexity([1.0, 1.0]) == 1.0
    assert perplexity([0.5, 0.0]) == math.inf
    with pytest.raises(ValueError, match="empty"):
        perplexity([])


def test_change_ratio_is_a_ratio_of_means():
    # mean before 0.3, mean after 0.15: -50 %; a mean of per-prompt ratios would say the same here ...
    assert change_ratio([0.2, 0.4], [0.1, 0.2]) == pytest.approx(-0.5)
    # ... but not here: (0.3 - 0.201) / 0.201, not mean(+9900 %, -50 %)
    assert change_ratio([0.001, 0.4], [0.1, 0.2]) == pytest.approx((0.15 - 0.2005) / 0.2005)
    with pytest.raises(ValueError):
        change_ratio([0.1], [])


def test_seeded_rng_depends_on_seed_and_key_only():
    a = [seeded_rng(3, "P19/0").random() for _ in range(2)]
    assert a[0] == a[1]
    assert seeded_rng(3, "P19/0").random() != seeded_rng(4, "P19/0").random()
    assert seeded_rng(3, "P19/0").random() != seeded_rng(3, "P19/1").random()


def test_random_neurons_are_distinct_excluded_and_seeded():
    exclude = [(0, 0), (1, 1)]
    drawn = random_neurons(10, 3, 5, random.Random(1), exclude)
    assert len(set(drawn)) == 10 and not set(drawn) & set(exclude)
    assert all(0 <= l < 3 and 0 <= i < 5 for l, i in drawn)
    assert drawn == random_neurons(10, 3, 5, random.Random(1), exclude)
    assert len(random_neurons(13, 3, 5, random.Random(0), exclude)) == 13  # every neuron left
    with pytest.raises(ValueError, match="cannot draw"):
        random_neurons(14, 3, 5, random.Random(0), exclude)


def test_random_like_keeps_facts_and_counts():
    refined = refined_table({"P19/0": [(0, 1), (2, 3)], "P36/0": [(1, 4)]})
    control = random_like(refined, n_layers=3, n_neurons=48, seed=5)
    assert neurons_by_fact(control).keys() == neurons_by_fact(refined).keys()
    assert control.groupby("fact_id").size().to_dict() == {"P19/0": 2, "P36/0": 1}
    assert set(control["method"]) == {"random"} and set(control["seed"]) == {5}
    assert not set(neurons_by_fact(control)["P19/0"]) & {(0, 1), (2, 3)}
    assert control.equals(random_like(refined, 3, 48, seed=5))


def test_most_frequent_breaks_ties_by_first_appearance_or_position():
    sets = [[(2, 1), (0, 5)], [(2, 1), (1, 0)], [(1, 0), (0, 9)]]
    # official (Counter.most_common): (2, 1) and (0, 5) are met first
    assert most_frequent(sets, 3) == [((2, 1), 2), ((1, 0), 2), ((0, 5), 1)]
    assert most_frequent(sets, 3, ties="index") == [((1, 0), 2), ((2, 1), 2), ((0, 5), 1)]  # ours before


def test_refined_table_is_checked():
    with pytest.raises(ValueError, match="lacks columns"):
        neurons_by_fact(pd.DataFrame({"fact_id": ["P19/0"]}))


def test_fact_prompts_log_every_unusable_prompt_once(tiny_llama):
    skips = SkipLog("test")
    prompts = FactPrompts(tiny_llama, FACTS, RELATIONS, skips)
    assert [p.template_id for p in prompts.of("P19/0")] == [0, 1]  # template 2 has [Y] before [X]
    prompts.of("P19/0")  # cached: not logged twice
    assert prompts.of("P19/3") == []  # two-token object
    frame = skips.frame()
    assert list(frame["fact_id"]) == ["P19/0", "P19/3"]
    assert "precedes" in frame["reason"][0] and "multi-token" in frame["reason"][1]
    assert prompts.by_relation() == {"P19": ["P19/0", "P19/1", "P19/2", "P19/3"], "P36": ["P36/0", "P36/1", "P36/2", "P36/3"]}
