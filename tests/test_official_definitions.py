"""The official scripts' definitions (Hunter-DDM/knowledge-neurons @ 922dfd9, src/), each pinned on a
small case worked by hand from the script's logic: ``select_kn`` and the sampling of
``6_edit_knowledge_sampled.py``, ``Counter.most_common``'s tie order in ``7_erase_knowledge.py`` and
its evaluation of every fact of the erased relation, and the unrelated facts of ``3_modify_activation.py``."""

from collections import Counter
from dataclasses import replace

import pandas as pd
import pytest
import torch

from kn_lib.experiments import EraseConfig, ManipulationConfig, UpdateConfig, erase_relations, suppress_and_amplify, update_facts
from kn_lib.experiments.controls import CONTROLS
from kn_lib.experiments.neuron_sets import most_frequent, official_bag_order
from kn_lib.experiments.update_plans import official_exclusive_neurons
from test_experiments_update_facts import RELATIONS as UPDATE_RELATIONS, _kns, learned_facts
from tiny_facts import FACTS, RELATIONS, refined_table


def test_select_kn_counts_the_own_bag_and_needs_twenty_bags():
    """select_kn: count = 1 (own bag) + the bags holding the neuron (own included); dropped when > 0.1 N.

    N = 20 bags: a neuron of the fact alone counts 1 + 1 = 2 <= 2.0, kept; one also in another bag
    counts 3 > 2.0, dropped. N = 19: 2 > 1.9, so nothing survives with fewer than 20 bags."""
    own = [[3, 7], [5, 1]]
    others = [[[5, 1]]] + [[] for _ in range(18)]
    assert official_exclusive_neurons(own, [own] + others) == [[3, 7]]  # 20 bags
    assert official_exclusive_neurons(own, [own] + others[:-1]) == []  # 19 bags
    forty = [own] + others + [[] for _ in range(20)]  # N = 40: limit 4.0, (5, 1) counts 3
    assert official_exclusive_neurons(own, forty) == [[3, 7], [5, 1]]  # the bag's order is kept
    # the script itself, transcribed: the same answers
    def select_kn(kn_bag, kn_bag_list):
        counter = Counter()
        for kn in kn_bag:
            counter.update([tuple(kn)])
        for bag in kn_bag_list:
            for kn in bag:
                if tuple(kn) in counter:
                    counter.update([tuple(kn)])
        return [list(k) for k, v in counter.items() if not v > len(kn_bag_list) * 0.1]

    for bags in ([own] + others, [own] + others[:-1], forty):
        assert official_exclusive_neurons(own, bags) == select_kn(own, bags)


def test_most_common_breaks_ties_by_first_appearance():
    """Counter.most_common keeps insertion order among equal counts: the neuron met first, walking the
    bags in data order and each bag in its order; ours ("index") takes the lower (layer, index)."""
    bags = [[(9, 1), (2, 5)], [(2, 5), (0, 3)], [(0, 3), (9, 1)], [(4, 4)]]  # three neurons tie at 2
    assert [n for n, _ in most_frequent(bags, 3)] == [(9, 1), (2, 5), (0, 3)]
    assert [n for n, _ in most_frequent(bags, 3, ties="index")] == [(0, 3), (2, 5), (9, 1)]
    assert most_frequent(bags, 4)[-1] == ((4, 4), 1)
    with pytest.raises(ValueError):
        most_frequent(bags, 2, ties="random")


def test_official_bag_order_is_first_appearance_over_prompts_in_data_order():
    """2_get_kn.py builds a bag from a Counter over the prompts' coarse lists (template order, each in
    (layer, index) order); the bag lists follow the query pairs' order ("P19/10" after "P19/2")."""
    refined = refined_table({"P19/10": [(0, 1)], "P19/2": [(0, 4), (3, 0), (1, 2)]})
    coarse = pd.DataFrame({"fact_id": ["P19/2"] * 4 + ["P19/10"],
                           "template_id": [1, 1, 0, 2, 0], "layer": [0, 3, 1, 0, 0], "neuron": [4, 0, 2, 4, 1]})
    order = official_bag_order(refined, coarse)
    assert list(order) == ["P19/2", "P19/10"]
    assert order["P19/2"] == [(1, 2), (0, 4), (3, 0)]  # template 0 first: (1, 2); then template 1: (0, 4), (3, 0)


def test_official_sampling_edits_exactly_n_with_replacement_from_the_whole_relation(tiny_llama):
    """Draws with replacement until exactly ``facts_per_relation`` edits; t' and the perplexity facts may
    come from facts outside the analysed sample (``population``); weights are restored exactly."""
    facts = learned_facts(tiny_llama)
    sample = [f for f in facts if f["fact_id"] in ("P19/0", "P19/1", "P36/0", "P36/1")]
    if len({f["relation"] for f in sample}) < 2:
        pytest.skip("the tiny model knows too few of these facts")
    refined = _kns(sample)
    kns = {f: [(int(r.layer), int(r.neuron)) for r in g.itertuples()] for f, g in refined.groupby("fact_id")}
    bags = {r: {**{f["fact_id"]: kns.get(f["fact_id"], []) for f in sample if f["relation"] == r},
                **{f"{r}/empty{i}": [] for i in range(30)}} for r in ("P19", "P36")}  # 32 bags: limit 3.2
    before = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    config = UpdateConfig(facts_per_relation=5, intra_facts=2, inter_facts=2, random_control=False, controls=())
    result = update_facts(tiny_llama, refined, sample, UPDATE_RELATIONS, config, population=facts, bags=bags)
    assert all(torch.equal(v, before[k]) for k, v in tiny_llama.model.state_dict().items())
    table = result.table
    counts = table.groupby("relation").size()
    assert (counts == 5).all()  # exactly 5 edits per relation from 2 facts: some fact is drawn twice
    assert table.edit.is_unique and (table.groupby("relation").fact_id.nunique() <= 2).all()
    assert table.n_neurons.eq(3).all()  # (0, 0) is in 2 of 32 bags: 1 + 2 = 3 <= 3.2, kept with the other two
    outside = {f["fact_id"] for f in facts} - {f["fact_id"] for f in sample}
    assert set(result.ppl_prompts.eval_fact_id) & outside  # perplexity facts from the whole relation
    # the same seed, the same edits; the variant does not repeat a fact
    assert result.table.equals(update_facts(tiny_llama, refined, sample, UPDATE_RELATIONS, config, population=facts, bags=bags).table)
    # the matched controls repeat each edit without changing which edits are drawn
    with_controls = update_facts(tiny_llama, refined, sample, UPDATE_RELATIONS, replace(config, controls=CONTROLS),
                                 population=facts, bags=bags).table
    kn_rows = with_controls[with_controls.neuron_set == "knowledge"].reset_index(drop=True)
    assert kn_rows[["edit", "fact_id", "template_id", "new_object", "top1_after"]].equals(
        table[["edit", "fact_id", "template_id", "new_object", "top1_after"]])
    assert all(list(sets) == ["knowledge", *CONTROLS] for _, sets in with_controls.groupby("edit").neuron_set)
    ours = update_facts(tiny_llama, refined, sample, UPDATE_RELATIONS,
                        UpdateConfig(facts_per_relation=5, intra_facts=2, inter_facts=2, random_control=False,
                                     controls=(), selection="ours", sampling="ours"))
    assert ours.table.fact_id.is_unique


def test_official_selection_with_too_few_bags_edits_nothing_and_says_why(tiny_llama):
    facts = learned_facts(tiny_llama)
    result = update_facts(tiny_llama, _kns(facts), facts, UPDATE_RELATIONS, UpdateConfig(max_draws=50))
    assert result.table.empty
    assert any("official select_kn" in r for r in result.skipped.reason)
    with pytest.raises(ValueError):
        UpdateConfig(sampling="mine")


def test_erase_measures_every_fact_of_the_erased_relation(tiny_llama):
    """Official: the erased relation's perplexity over all its facts, not only the analysed ones."""
    kns = {"P19/0": [(2, 7), (1, 3)], "P19/1": [(2, 7)]}
    sample = [f for f in FACTS if f["fact_id"] in kns or f["relation"] == "P36"]
    official = erase_relations(tiny_llama, refined_table(kns), sample, RELATIONS, EraseConfig(relations=("P19",)), population=FACTS)
    ours = erase_relations(tiny_llama, refined_table(kns), sample, RELATIONS,
                           EraseConfig(relations=("P19",), erased_facts="sample", ties="index"), population=FACTS)
    erased = official.table[official.table.scope == "erased"]
    assert {"P19/2"} <= set(erased.fact_id) and not erased[erased.fact_id == "P19/2"].in_sample.any()
    assert set(ours.table[ours.table.scope == "erased"].fact_id) == {"P19/0", "P19/1"}
    assert list(official.neurons.neuron) == list(ours.neurons.neuron) == [7, 3]


def test_unrelated_facts_come_from_every_other_relation(tiny_llama):
    """3_modify_activation.py draws the unrelated fact among all facts of the other relations."""
    sample = [f for f in FACTS if f["relation"] == "P19"]
    refined = refined_table({f["fact_id"]: [(1, 1)] for f in sample})
    result = suppress_and_amplify(tiny_llama, refined, sample, RELATIONS, ManipulationConfig(), population=FACTS)
    unrelated = result.table[result.table.scope == "unrelated"]
    assert len(unrelated) and set(unrelated.eval_relation) == {"P36"}
    ours = suppress_and_amplify(tiny_llama, refined, sample, RELATIONS, ManipulationConfig(unrelated_pool="sample"))
    assert ours.table[ours.table.scope == "unrelated"].empty  # the sample has no other relation
