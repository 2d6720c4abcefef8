"""Figures 4-5 mechanics on tiny models (both families) with hand-made neuron sets, and one real run."""

import pytest

from kn_lib.experiments import ManipulationConfig, change_ratio, random_like, suppress_and_amplify
from kn_lib.experiments.evaluation import answer_distribution
from kn_lib.experiments.interventions import scaled_activations
from real_model import describe, real_kn, single_thread  # noqa: F401 (fixtures)
from tiny_facts import FACTS, RELATIONS, refined_table

KNS = {"P19/0": [(1, 3), (2, 7)], "P19/1": [(2, 7)], "P36/0": [(0, 11), (2, 40)], "P36/2": [(1, 3)]}


def test_rows_and_probabilities(tiny):
    result = suppress_and_amplify(tiny, refined_table(KNS), FACTS, RELATIONS, ManipulationConfig(seed=1))
    table = result.table
    own = table[(table.scope == "own") & (table.n_kn > 0)]
    n_templates = 3 if tiny.family == "masked" else 2  # a causal model cannot ask "[Y] ... [X]"
    assert own.groupby("fact_id").size().to_dict() == {f: 2 * n_templates for f in KNS}
    # official averaging: facts without knowledge neurons are evaluated too, with zero change
    none = table[table.n_kn == 0]
    assert set(none.fact_id) == {"P19/2", "P36/1", "P36/3"} and (none.p_after == none.p_before).all()
    row = own[(own.fact_id == "P19/0") & (own.template_id == 0) & (own.operation == "suppress")].iloc[0]
    prompt = tiny.encode(RELATIONS["P19"].templates[0], "alice", "paris")
    # the experiment batches its prompts: equal to one prompt at a time up to float rounding, which
    # depends on the batch and on the number of threads
    assert row.p_before == pytest.approx(answer_distribution(tiny, prompt)[prompt.target_id].item(), rel=1e-5)
    with scaled_activations(tiny, KNS["P19/0"], prompt.answer_pos, 0.0):
        assert row.p_after == pytest.approx(answer_distribution(tiny, prompt)[prompt.target_id].item(), rel=1e-5)
    # the unrelated fact comes from the other relation, and carries the evaluated fact's own answer
    unrelated = table[table.scope == "unrelated"]
    assert (unrelated.relation != unrelated.eval_relation).all() and set(unrelated[unrelated.n_kn > 0].fact_id) == set(KNS)
    # per relation: the change ratio of the rows
    sel = table[(table.relation == "P36") & (table.scope == "own") & (table.operation == "amplify")]
    got = result.by_relation.set_index(["relation", "scope", "operation"]).loc[("P36", "own", "amplify"), "change_ratio"]
    assert got == pytest.approx(change_ratio(sel.p_before, sel.p_after))
    assert result.summary.amplify_own == pytest.approx(
        100 * result.by_relation.query("scope == 'own' and operation == 'amplify'")["change_ratio"].mean()
    )
    assert result.summary.seed == 1 and set(result.by_relation["seed"]) == {1}


def test_official_averaging_counts_facts_without_neurons_as_zero_change(tiny_llama):
    """Worked by hand from the table: the official ratio pools every fact's prompts (zero change where a
    fact has no knowledge neuron) and averages over every relation (0 % where none has any); ours
    (kn_only) keeps facts with knowledge neurons only."""
    kns = {"P19/0": [(1, 3), (2, 7)]}  # P36 has no knowledge neuron at all
    result = suppress_and_amplify(tiny_llama, refined_table(kns), FACTS, RELATIONS, ManipulationConfig(unrelated=False))
    t = result.table[result.table.operation == "suppress"]
    p19 = t[t.relation == "P19"]
    official_p19 = (p19.p_after.mean() - p19.p_before.mean()) / p19.p_before.mean()
    mine = p19[p19.fact_id == "P19/0"]
    kn_only_p19 = (mine.p_after.mean() - mine.p_before.mean()) / mine.p_before.mean()
    assert len(p19) > len(mine) > 0 and official_p19 != pytest.approx(kn_only_p19)
    s = result.summary
    assert s.suppress_own == pytest.approx(100 * (official_p19 + 0.0) / 2)  # P36: 0 %, two relations
    assert s.suppress_own_kn_only == pytest.approx(100 * kn_only_p19)  # P19 only
    assert (s.n_relations, s.n_relations_with_kn, s.n_facts_with_kn) == (2, 1, 1)
    variant = suppress_and_amplify(tiny_llama, refined_table(kns), FACTS, RELATIONS,
                                   ManipulationConfig(unrelated=False, averaging="kn_only"))
    assert variant.summary.suppress_own == pytest.approx(s.suppress_own_kn_only)
    pd_equal = variant.by_relation.drop(columns=["model", "method", "seed"]).reset_index(drop=True)
    assert pd_equal.equals(result.by_relation_kn_only.drop(columns=["model", "method", "seed"]).reset_index(drop=True))
    with pytest.raises(ValueError, match="averaging"):
        ManipulationConfig(averaging="mine")


def test_skipped_facts_are_reported(tiny_bert):
    result = suppress_and_amplify(tiny_bert, refined_table(KNS), FACTS, RELATIONS, ManipulationConfig(averaging="kn_only"))
    reasons = dict(zip(result.skipped.fact_id, result.skipped.reason))
    assert "multi-token object" in reasons["P19/3"]
    assert reasons["P19/2"] == reasons["P36/1"] == "no knowledge neurons"
    only_p19 = suppress_and_amplify(tiny_bert, refined_table({"P19/0": [(0, 1)]}), FACTS, RELATIONS)
    assert "relation without knowledge neurons" in set(only_p19.skipped.reason)
    alone = [f for f in FACTS if f["relation"] == "P19"]
    lonely = suppress_and_amplify(tiny_bert, refined_table({"P19/0": [(0, 1)]}), alone, RELATIONS)
    assert "no other relation to draw an unrelated fact from" in set(lonely.skipped.reason)
    assert set(lonely.table.scope) == {"own"}


def test_unrelated_facts_follow_the_seed(tiny_llama):
    def drawn(seed):
        t = suppress_and_amplify(tiny_llama, refined_table(KNS), FACTS, RELATIONS, ManipulationConfig(seed=seed)).table
        return t[t.scope == "unrelated"].drop_duplicates("fact_id").set_index("fact_id")["eval_fact_id"].to_dict()

    assert drawn(0) == drawn(0)
    assert any(drawn(0) != drawn(s) for s in range(1, 6))


@pytest.mark.integration
def test_suppress_and_amplify_on_the_real_model(real_kn):
    a = real_kn.adapter
    ig = suppress_and_amplify(a, real_kn.ig.refined, real_kn.facts, real_kn.relations)
    activation = suppress_and_amplify(
        a, real_kn.activation.refined[real_kn.activation.refined.fact_id == "P37/11"], real_kn.facts, real_kn.relations
    )
    control = suppress_and_amplify(
        a, random_like(real_kn.ig.refined, a.n_layers, a.n_neurons, seed=0), real_kn.facts, real_kn.relations,
        ManipulationConfig(unrelated=False),
    )
    for result in (ig, activation, control):
        print(result.summary, describe(result.by_relation.drop(columns=["model", "seed"])), sep="\n")
        assert result.summary.n_facts_with_kn == 1 and (result.table.p_before > 0).all()
    # suppressing the fact's integrated-gradient neurons lowers p(French | "The official language of Haiti is")
    # on average, amplifying them raises it (section 4.5); measured here: about -26 % and +27 %
    assert ig.summary.suppress_own < 0 < ig.summary.amplify_own
