"""Tables 3-4 mechanics: masked prompts of the three types, how each family reads them, the averages."""

import pandas as pd
import pytest

from kn_lib.adapters import UnusablePrompt
from kn_lib.bingrel import FactBags, MaskedSentence, load_bags
from kn_lib.data import DataSource
from kn_lib.experiments import BingRelConfig, bingrel_activation, top_bottom_sentences
from kn_lib.experiments.bingrel_activation import encode_masked, masked_prompts, mean_activation
from kn_lib.experiments.evaluation import SkipLog
from real_model import describe, real_kn, single_thread  # noqa: F401 (fixtures)
from tiny_facts import refined_table

BAGS = {
    "P19/0": FactBags(
        "P19/0", "P19", "alice", "paris",
        ("alice was born in paris .", "paris is where alice was born .", "the city of paris , alice ."),
        ("alice is a who .", "alice speaks the language of a country .", "alice"),
    ),
    "P36/0": FactBags(
        "P36/0", "P36", "france", "paris",
        ("the capital of france is paris .", "france capital city paris", "in france , the city paris is the capital ."),
        ("france is a country .", "who speaks the language of france ?"),
    ),
    "P36/1": FactBags("P36/1", "P36", "england", "london", (), ("england is a country .",)),
}
KNS = {"P19/0": [(0, 3), (2, 17)], "P36/0": [(1, 5)], "P36/1": [(2, 2)], "P36/2": [(0, 0)]}
POOL = [s for b in BAGS.values() for s in (*b.th_bags, *b.h_bags)]


def test_three_types_seeded_and_as_many_t3_as_t1():
    skips = SkipLog("test")
    prompts = masked_prompts(BAGS["P19/0"], POOL, BingRelConfig(seed=2), skips)
    kinds = [k for k, _, _ in prompts]
    assert kinds.count("T1") == 3 and kinds.count("T2") == 2 and kinds.count("T3") == 3
    assert all(m.masked == "paris" for k, _, m in prompts if k == "T1")
    assert list(skips.frame().item) == ["T2 2"]  # the one-word sentence "alice"
    assert prompts == masked_prompts(BAGS["P19/0"], POOL, BingRelConfig(seed=2), SkipLog("test"))
    others = [masked_prompts(BAGS["P19/0"], POOL, BingRelConfig(seed=s), SkipLog("test")) for s in range(3, 8)]
    assert any(o != prompts for o in others)
    few = masked_prompts(BAGS["P19/0"], POOL, BingRelConfig(seed=2, max_sentences=1), SkipLog("test"))
    assert sorted(k for k, _, _ in few) == ["T1", "T2", "T3"]


def test_a_fact_with_an_empty_bag_is_left_out_and_reported():
    skips = SkipLog("test")
    assert masked_prompts(BAGS["P36/1"], POOL, BingRelConfig(), skips) == []
    assert "empty th_bags" in skips.frame().reason[0]


def test_each_family_reads_the_masked_word(tiny_bert, tiny_llama):
    sentence = MaskedSentence("alice was born in paris .", 18, 23)
    masked = encode_masked(tiny_bert, sentence)
    assert masked.input_ids[masked.answer_pos] == tiny_bert.tokenizer.mask_token_id
    assert masked.text == "alice was born in [MASK] ."
    causal = encode_masked(tiny_llama, sentence)
    assert causal.text == "alice was born in" and causal.answer_pos == len(causal.input_ids) - 1
    with pytest.raises(UnusablePrompt, match="nothing precedes"):
        encode_masked(tiny_llama, MaskedSentence("paris is where alice was born .", 0, 5))
    with pytest.raises(UnusablePrompt, match="max_tokens"):
        encode_masked(tiny_bert, sentence, max_tokens=4)


def test_activations_are_read_at_the_masked_position(tiny):
    result = bingrel_activation(tiny, refined_table(KNS), BAGS, BingRelConfig(seed=1))
    table = result.table
    assert set(table.fact_id) == {"P19/0", "P36/0"}
    row = table[(table.fact_id == "P19/0") & (table.type == "T2")].iloc[-1]
    prompts = masked_prompts(BAGS["P19/0"], POOL, BingRelConfig(seed=1), SkipLog("test"))
    (sentence,) = [m for k, i, m in prompts if k == "T2" and i == row.sentence_id]
    acts = tiny.activations(encode_masked(tiny, sentence))
    assert row.activation == pytest.approx(acts[row.layer, row.neuron].item(), abs=1e-6)
    reasons = result.skipped.groupby("fact_id").reason.apply(list).to_dict()
    assert "no BINGREL bags given for this fact" in reasons["P36/2"] and "empty th_bags" in reasons["P36/1"][0]
    if tiny.family == "causal":  # "paris is where ..." has nothing before the tail
        assert any("nothing precedes" in r for r in reasons["P19/0"])
    means = mean_activation(table, ["type"]).set_index("type").activation
    assert (result.summary.t1, result.summary.t2, result.summary.t3) == pytest.approx((means.T1, means.T2, means.T3))
    assert result.summary.n_sentences["T1"] == table[table.type == "T1"].drop_duplicates(["fact_id", "sentence_id"]).shape[0]


def test_mean_activation_averages_sentences_then_neurons_then_relations():
    rows = [
        ("P1", "P1/0", "T1", 0, 0, 1.0), ("P1", "P1/0", "T1", 0, 0, 3.0),  # neuron mean 2
        ("P1", "P1/0", "T1", 0, 1, 4.0),  # neuron mean 4 -> relation P1: (2 + 4) / 2 = 3
        ("P2", "P2/0", "T1", 1, 1, -1.0),  # relation P2: -1
    ]
    table = pd.DataFrame(rows, columns=["relation", "fact_id", "type", "layer", "neuron", "activation"])
    assert mean_activation(table, ["relation", "type"]).activation.tolist() == [3.0, -1.0]
    assert mean_activation(table, ["type"]).activation.tolist() == [1.0]
    # by magnitude: each activation's sign dropped before the same three averages
    expected = mean_activation(table.assign(activation=table.activation.abs()), ["relation", "type"])
    assert mean_activation(table, ["relation", "type"], absolute=True).equals(expected)


def test_top_and_bottom_sentences(tiny_bert):
    table = bingrel_activation(tiny_bert, refined_table(KNS), BAGS).table
    ranked = top_bottom_sentences(table, "P19/0", k=1)
    assert ranked["rank"].tolist() == ["top", "bottom"]
    assert ranked.activation[0] >= ranked.activation[1]
    assert top_bottom_sentences(table, "P19/0", k=5)["rank"].tolist() == ["top"] * 3  # three T1 sentences in all
    with pytest.raises(ValueError, match="no T1"):
        top_bottom_sentences(table, "P36/1")


@pytest.mark.integration
def test_bingrel_activation_on_the_real_model(real_kn, mirror):
    bags = load_bags(["P37"], DataSource(mirror=mirror))
    config = BingRelConfig(seed=0, max_sentences=4)
    result = bingrel_activation(real_kn.adapter, real_kn.ig.refined, bags, config)
    print(result.summary, describe(result.skipped), sep="\n")
    print(describe(top_bottom_sentences(result.table, "P37/11")))
    assert result.summary.n_facts == 1 and result.summary.seed == 0
    assert all(0 < n <= 4 for n in result.summary.n_sentences.values())
    assert result.table.activation.notna().all()
