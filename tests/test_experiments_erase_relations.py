"""Table 5 mechanics on tiny models: which neurons are erased, perplexities before and after, exact
restore, reported gaps; then the paper's relations on the real model."""

import pandas as pd
import pytest
import torch

from kn_lib.experiments import EraseConfig, erase_relations, perplexity
from kn_lib.experiments.evaluation import answer_distribution
from kn_lib.experiments.interventions import edited_value_slots, erased_value_slots
from real_model import all_weights, describe, real_kn, same_weights, single_thread  # noqa: F401 (fixtures)
from tiny_facts import FACTS, RELATIONS, refined_table

KNS = {
    "P19/0": [(2, 7), (1, 3), (0, 9)],
    "P19/1": [(2, 7), (1, 3)],
    "P19/2": [(2, 7), (0, 1)],
    "P36/0": [(2, 7), (1, 30)],
}


def test_most_frequent_neurons_are_zeroed_and_restored(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    result = erase_relations(tiny, refined_table(KNS), FACTS, RELATIONS, EraseConfig(relations=("P19",), top_k=2))
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    # (2, 7) in 3 facts, (1, 3) in 2; (0, 1) and (0, 9) in 1 each are left
    assert list(zip(result.neurons.layer, result.neurons.neuron, result.neurons.n_facts)) == [(2, 7, 3), (1, 3, 2)]
    table = result.table
    assert set(table[table.scope == "erased"].relation) == {"P19"} and set(table[table.scope == "other"].relation) == {"P36"}
    row = table[(table.fact_id == "P36/1") & (table.template_id == 0)].iloc[0]
    prompt = tiny.encode(RELATIONS["P36"].templates[0], "england", "london")
    assert row.p_before == pytest.approx(answer_distribution(tiny, prompt)[prompt.target_id].item(), rel=1e-5)  # batched
    with edited_value_slots(tiny, erased_value_slots(tiny, [(2, 7), (1, 3)])):
        assert row.p_after == pytest.approx(answer_distribution(tiny, prompt)[prompt.target_id].item(), rel=1e-5)
    summary = result.by_relation.iloc[0]
    erased = table[table.scope == "erased"]
    assert summary.erased_ppl_before == pytest.approx(perplexity(erased.p_before.tolist()))
    assert summary.erased_ppl_after == pytest.approx(perplexity(erased.p_after.tolist()))
    assert summary.other_ppl_change == pytest.approx(100 * (summary.other_ppl_after / summary.other_ppl_before - 1))
    assert summary.erased_n_prompts == len(erased) and summary.n_neurons == 2


def test_top_k_counts_every_fact_of_the_relation_and_reports_how_many_were_erased(tiny_llama):
    """Official 7_erase_knowledge.py: Counter over every fact's knowledge neurons, most_common(20). P19's
    facts hold 4 distinct neurons, so 4 are erased, not 20; the accuracy before erasing is reported."""
    result = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, EraseConfig(relations=("P19",)))
    assert result.by_relation.loc[0, "n_neurons"] == 4 == len(result.neurons)
    assert result.neurons["n_facts"].tolist() == [3, 2, 1, 1]  # (2, 7), (1, 3), then (0, 1), (0, 9)
    erased = result.table[result.table.scope == "erased"]
    assert result.by_relation.loc[0, "erased_accuracy_before"] == pytest.approx(erased.correct_before.mean())


def test_default_relations_and_gaps_are_reported(tiny_bert):
    """The paper's four relations by default; those without facts or neurons are named, not dropped."""
    assert EraseConfig().relations == ("P19", "P27", "P106", "P937") and EraseConfig().top_k == 20
    result = erase_relations(tiny_bert, refined_table(KNS), FACTS, RELATIONS)
    assert result.by_relation.relation.tolist() == ["P19"]
    assert result.by_relation.n_neurons.tolist() == [4]  # fewer than 20 exist
    reasons = result.skipped.set_index("relation").reason
    assert reasons["P27"] == reasons["P106"] == reasons["P937"] == "no facts of this relation given"
    assert "multi-token object" in result.skipped[result.skipped.fact_id == "P19/3"].reason.iloc[0]
    no_kn = erase_relations(tiny_bert, refined_table({"P19/0": [(0, 1)]}), FACTS, RELATIONS, EraseConfig(relations=("P36",)))
    assert no_kn.skipped.reason.tolist()[-1] == "relation without knowledge neurons" and no_kn.table.empty


def test_other_facts_are_sampled_with_the_seed(tiny_llama):
    def other_facts(seed):
        config = EraseConfig(relations=("P19",), max_other_facts=2, seed=seed)
        t = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, config).table
        return sorted(set(t[t.scope == "other"].fact_id))

    assert len(other_facts(0)) == 2 and other_facts(0) == other_facts(0)
    assert any(other_facts(0) != other_facts(s) for s in range(1, 8))


@pytest.mark.integration
def test_erase_the_papers_relations_on_the_real_model(real_kn):
    """Default relations (P19, P27, P106, P937): of our three facts only P106 is among them."""
    saved = all_weights(real_kn.adapter)
    result = erase_relations(real_kn.adapter, real_kn.activation.refined, real_kn.facts, real_kn.relations,
                             EraseConfig(max_other_facts=1))
    assert same_weights(real_kn.adapter, saved)
    print(result.summary, describe(result.by_relation.T), describe(result.neurons), sep="\n")
    assert result.by_relation.relation.tolist() == ["P106"]
    assert set(result.skipped.relation) >= {"P19", "P27", "P937"}
    assert result.by_relation.erased_ppl_before.iloc[0] > 0


def test_flip_marks_answers_the_erasure_took_away(tiny_llama):
    """``flip``: answered top-1 before, not after; Table 5's flip rate is their share of the answered prompts,
    and a table stored without the column gets the same flips from ``correct_before``/``correct_after``."""
    from kn_lib.experiments.erase_relations import answers_lost, table5

    result = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, EraseConfig(relations=("P19",)))
    table = result.table
    assert table["flip"].tolist() == (table.correct_before & ~table.correct_after).tolist()
    erased = table.scope == "erased"
    hand = table.drop(columns="flip").assign(correct_before=True, correct_after=False)
    hand.loc[hand.index[erased][0], "correct_after"] = True  # one erased-relation answer kept
    hand.loc[hand.index[erased][1], "correct_before"] = False  # one never answered: not a flip
    assert answers_lost(hand).tolist() == [i not in hand.index[erased][:2] for i in hand.index]
    row = table5(hand, result.neurons).iloc[0]
    assert row.erased_flip_rate == pytest.approx(100 * (erased.sum() - 2) / (erased.sum() - 1))
    assert row.other_flip_rate == pytest.approx(100.0)


def test_resume_and_before_give_the_same_table_as_one_run(tiny_llama):
    """A run saved relation by relation (``on_relation``) and resumed from them, or given the unedited
    answers already measured (``before``), returns what one uninterrupted run returns."""
    config = EraseConfig(relations=("P19", "P36"), top_k=2)
    saved = {}
    whole = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, config,
                            on_relation=lambda r, e: saved.setdefault(r, e))
    assert list(saved) == ["P19", "P36"] and saved["P19"].rows["p_after"].tolist() == \
        whole.table[whole.table.erased_relation == "P19"]["p_after"].tolist()
    resumed = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, config, resume={"P19": saved["P19"]})
    pd.testing.assert_frame_equal(resumed.table, whole.table)
    pd.testing.assert_frame_equal(resumed.neurons, whole.neurons)
    pd.testing.assert_frame_equal(resumed.by_relation, whole.by_relation)
    known = {(f, t): (0.5, True) for f, t in zip(whole.table.fact_id, whole.table.template_id)}
    given = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, config, before=known)
    assert set(given.table.p_before) == {0.5} and given.table.correct_before.all()


def test_a_callable_before_is_asked_again_when_a_relation_lacks_answers(tiny_llama):
    """A control run beside the knowledge neurons' run: ``before`` as a callable is read again when a relation
    has prompts it lacks, so answers saved meanwhile are taken, not measured; what it never holds is measured."""
    config = EraseConfig(relations=("P19", "P36"), top_k=2)
    whole = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, config)
    saved = {(f, t): (0.25, False) for f, t in zip(whole.table.fact_id, whole.table.template_id)}
    calls = []

    def saved_so_far():  # nothing at the start; the other run has saved every answer by the next call
        calls.append(1)
        return {} if len(calls) == 1 else saved

    given = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, config, before=saved_so_far)
    assert len(calls) == 2  # at the start, and for P19; P36 then has every answer it needs
    assert set(given.table.p_before) == {0.25} and not given.table.correct_before.any()
    assert given.table.p_after.tolist() == whole.table.p_after.tolist()
    never = erase_relations(tiny_llama, refined_table(KNS), FACTS, RELATIONS, config, before=lambda: {})
    pd.testing.assert_frame_equal(never.table, whole.table)  # nothing saved: all measured, as one run
