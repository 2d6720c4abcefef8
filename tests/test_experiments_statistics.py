"""Figure 3 and Table 2 on hand-made neuron sets with known answers, sampling, and one real run."""

import pandas as pd
import pytest

from kn_lib.experiments import StatisticsConfig, neuron_statistics
from kn_lib.experiments.neuron_statistics import layer_percentages
from real_model import describe, real_kn, single_thread  # noqa: F401 (fixtures)
from tiny_facts import refined_table

KNS = {
    "P19/0": [(0, 1), (1, 2), (2, 3)],
    "P19/1": [(1, 2), (2, 3)],
    "P36/0": [(2, 3), (0, 5)],
    "P36/1": [(0, 5)],
}
SEARCHED = pd.DataFrame(
    {"fact_id": ["P19/0", "P19/1", "P19/2", "P36/0", "P36/1", "P27/0"], "relation": ["P19", "P19", "P19", "P36", "P36", "P27"]}
)


def test_hand_computed_statistics():
    result = neuron_statistics(refined_table(KNS), SEARCHED[SEARCHED.relation != "P27"], n_layers=4,
                               config=StatisticsConfig(inter_pairs="uniform"))
    s = result.summary
    assert s.mean_kn_per_fact == pytest.approx(8 / 5)  # P19/2 has none and counts as 0
    # intra: P19 pairs (0,1)=2, (0,2)=0, (1,2)=0; P36 pair (0,1)=1
    assert (s.n_intra_pairs, s.mean_intra_intersection) == (4, pytest.approx(3 / 4))
    # inter: 3 x 2 pairs; P19/0 and P19/1 each share (2, 3) with P36/0
    assert (s.n_inter_pairs, s.mean_inter_intersection) == (6, pytest.approx(2 / 6))
    assert not s.pairs_sampled and s.method == "hand"
    # official: 100 partners per fact (relation first, then fact); with two relations every partner is
    # one of the other relation's facts, so the mean estimates the same 2 / 6
    official = neuron_statistics(refined_table(KNS), SEARCHED[SEARCHED.relation != "P27"]).summary
    assert official.n_inter_pairs == 5 * 100 and official.mean_inter_intersection == pytest.approx(2 / 6, abs=0.06)
    assert result.layers["percent"].tolist() == [37.5, 25.0, 37.5, 0.0]  # 3, 2, 3 of 8 neurons; layer 3 empty
    assert result.skipped.empty


def test_relation_without_neurons_is_counted_and_reported():
    result = neuron_statistics(refined_table(KNS), SEARCHED)
    assert result.summary.n_relations == 3 and result.summary.mean_kn_per_fact == pytest.approx(8 / 6)
    assert result.skipped["relation"].tolist() == ["P27"]
    assert "without knowledge neurons" in result.skipped["reason"][0]


def test_without_a_fact_list_only_facts_with_neurons_count():
    assert neuron_statistics(refined_table(KNS)).summary.mean_kn_per_fact == pytest.approx(8 / 4)


def test_pairs_are_sampled_with_the_given_size_and_seed():
    many = refined_table({f"P{r}/{i}": [(0, i % 3), (1, r)] for r in (1, 2, 3) for i in range(20)})
    config = StatisticsConfig(max_pairs=50, seed=3, inter_pairs="uniform")
    result = neuron_statistics(many, config=config)
    assert result.summary.pairs_sampled and result.summary.seed == 3
    assert (result.pairs["kind"].value_counts() == 50).all()
    intra = result.pairs[result.pairs.kind == "intra"]
    assert (intra["fact_a"].str.split("/").str[0] == intra["fact_b"].str.split("/").str[0]).all()
    assert (intra["fact_a"] != intra["fact_b"]).all()
    inter = result.pairs[result.pairs.kind == "inter"]
    assert (inter["fact_a"].str.split("/").str[0] != inter["fact_b"].str.split("/").str[0]).all()
    assert result.pairs.equals(neuron_statistics(many, config=config).pairs)
    assert not result.pairs.equals(neuron_statistics(many, config=StatisticsConfig(max_pairs=50, seed=4, inter_pairs="uniform")).pairs)
    # the sampled means estimate the exhaustive ones: intra pairs share (1, r) plus, a third of the time, (0, i % 3)
    exact = neuron_statistics(many, config=StatisticsConfig(inter_pairs="uniform")).summary
    assert not exact.pairs_sampled and exact.n_intra_pairs == 3 * 190 and exact.n_inter_pairs == 3 * 400


def test_official_inter_pairs_draw_the_relation_first():
    """a and b (relations A, B, one fact each) share a neuron; relation C has 10 facts sharing nothing.
    Uniform over the 21 cross-relation pairs the mean is 1/21; the official draw (per fact, 100 partners:
    another relation uniformly, then one of its facts) gives a and b each other half the time:
    expected (50 + 50) / 1200 = 1/12, by hand."""
    kns = {"A/0": [(0, 1)], "B/0": [(0, 1)]} | {f"C/{i}": [(1, i)] for i in range(10)}
    uniform = neuron_statistics(refined_table(kns), config=StatisticsConfig(inter_pairs="uniform")).summary
    assert uniform.n_inter_pairs == 21 and uniform.mean_inter_intersection == pytest.approx(1 / 21)
    official = neuron_statistics(refined_table(kns), config=StatisticsConfig(seed=0)).summary
    assert official.n_inter_pairs == 12 * 100
    assert 0.065 < official.mean_inter_intersection < 0.10  # 1/12 = 0.083; 1/21 = 0.048 is excluded
    with pytest.raises(ValueError, match="inter_pairs"):
        StatisticsConfig(inter_pairs="all")


def test_layer_percentages_of_an_empty_table():
    assert layer_percentages(refined_table({}), n_layers=2)["percent"].tolist() == [0.0, 0.0]


@pytest.mark.integration
def test_statistics_on_the_real_model(real_kn):
    for result in (real_kn.activation, real_kn.ig):
        stats = neuron_statistics(result.refined, result.prompts, real_kn.adapter.n_layers)
        print(stats.summary, describe(stats.layers[stats.layers.n_kn > 0]), sep="\n")
        assert len(stats.layers) == real_kn.adapter.n_layers == 30
        assert stats.layers["percent"].sum() == pytest.approx(100.0)
        assert stats.summary.n_facts == result.prompts["fact_id"].nunique()
        assert stats.summary.mean_kn_per_fact == pytest.approx(len(result.refined) / stats.summary.n_facts)
