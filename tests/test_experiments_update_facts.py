"""Table 6 mechanics on tiny models: which facts and neurons are edited, the control, the metrics,
seeds, and weights restored bit for bit; then one real edit."""

import pandas as pd
import pytest
import torch

from kn_lib.data import Relation
from kn_lib.experiments import UpdateConfig, perplexity, update_facts
from kn_lib.experiments.evaluation import answer_distribution
from kn_lib.experiments.update_plans import draw_new_object, exclusive_neurons
from real_model import all_weights, describe, real_kn, same_weights, single_thread  # noqa: F401 (fixtures)
from tiny_facts import refined_table

OURS = dict(selection="ours", sampling="ours")  # the variant these tests pin (the official default: below)

SUBJECTS = ("alice", "bob", "carol", "dave", "france", "italy", "germany", "england")
RELATIONS = {
    "P19": Relation("P19", "place of birth", "N-1", ("[X] was born in [Y] .", "[X] is born in [Y] .")),
    "P36": Relation("P36", "capital", "1-1", ("the capital of [X] is [Y] .", "[X] capital city is [Y] .")),
}


def learned_facts(adapter):
    """Facts the tiny random model 'knows': the object of each is its own top-1 answer to template 0,
    plus facts it does not know, whose objects give the edits somewhere to go."""
    words = adapter.tokenizer.convert_ids_to_tokens(list(range(len(adapter.tokenizer))))
    facts = []
    for rid, rel in RELATIONS.items():
        for i, subject in enumerate(SUBJECTS):
            prompt = adapter.encode(rel.templates[0], subject, "the")
            top = words[int(answer_distribution(adapter, prompt).argmax())]
            if top.isalpha():  # a plain word (not [PAD], [MASK], <s>, ...)
                facts.append({"fact_id": f"{rid}/{i}", "relation": rid, "subject": subject, "object": top})
        for j, obj in enumerate(("rome", "london", "berlin")):
            facts.append({"fact_id": f"{rid}/{10 + j}", "relation": rid, "subject": SUBJECTS[j], "object": obj})
    return facts


def _kns(facts):
    """Two neurons per fact, unique to it, plus (0, 0) shared by every fact."""
    return refined_table({f["fact_id"]: [(2, 2 * i), (1, 2 * i + 1), (0, 0)] for i, f in enumerate(facts)})


def test_exclusive_neurons():
    kns = {"a": [(0, 1), (0, 2)], "b": [(0, 2)], "c": [], "d": [(0, 2)]}
    assert exclusive_neurons("a", kns, ["a", "b", "c", "d"], 0.1) == [(0, 1)]  # (0, 2) is in 2 of 3 others
    assert exclusive_neurons("a", kns, ["a", "b", "c", "d"], 0.7) == [(0, 1), (0, 2)]  # 2/3 < 0.7
    assert exclusive_neurons("a", kns, ["a"], 0.1) == [(0, 1), (0, 2)]  # no other fact: nothing is shared


def test_new_object_is_drawn_by_fact_not_by_distinct_object():
    """Official 6_edit_knowledge_sampled.py: t' = the object of a random other fact of the relation, so an
    object of 9 facts out of 10 comes up about 90 % of the time (a draw among distinct objects: 50 %)."""
    import random

    rng = random.Random(0)
    objects = ["rome"] * 9 + ["oslo", "paris"]  # the edited fact's own object is paris
    draws = [draw_new_object("paris", objects, rng) for _ in range(2000)]
    assert "paris" not in draws
    assert 0.87 < draws.count("rome") / len(draws) < 0.93
    assert draw_new_object("paris", ["paris", "paris"], rng) is None
    assert draw_new_object("paris", objects, rng, usable=lambda o: o != "rome") == "oslo"


def test_share_is_measured_over_every_searched_fact(tiny_llama):
    """A neuron of the edited fact that 1 of 10 other searched facts also has is not "shared by fewer than
    10 %"; with 11 others it is. Among only the given facts of the relation it is in 1 of 2 others."""
    import pandas as pd

    learned = learned_facts(tiny_llama)
    p19 = [f for f in learned if f["relation"] == "P19"][:2]
    facts = p19 + [f for f in learned if f["fact_id"] == "P19/10"] + [f for f in learned if f["relation"] == "P36"][:1]
    a, b = p19[0]["fact_id"], p19[1]["fact_id"]
    kns = {a: [(0, 1), (0, 2)], b: [(0, 2)]}
    searched_ids = [a, b] + [f"P19/s{i}" for i in range(9)]
    assert exclusive_neurons(a, kns, searched_ids, 0.1) == [(0, 1)]  # 1/10 is not < 10 %
    assert exclusive_neurons(a, kns, searched_ids + ["P19/s9"], 0.1) == [(0, 1), (0, 2)]  # 1/11 < 10 %
    searched = pd.DataFrame({"fact_id": searched_ids + ["P19/s9"], "relation": "P19"})
    config = UpdateConfig(**OURS, random_control=False, controls=(), facts_per_relation=2, intra_facts=1, inter_facts=1)
    wide = update_facts(tiny_llama, refined_table(kns), facts, RELATIONS, config, searched=searched)
    narrow = update_facts(tiny_llama, refined_table(kns), facts, RELATIONS, config)

    def edited(result, fact):
        return {tuple(n) for row in result.table[result.table.fact_id == fact].neurons for n in row}

    assert edited(wide, a) == {(0, 1), (0, 2)} and edited(wide, b) == {(0, 2)}
    assert edited(narrow, a) == {(0, 1)} and edited(narrow, b) == set()  # (0, 2): 1 of 2 others


def test_edits_controls_and_restore(tiny):
    facts = learned_facts(tiny)
    refined = _kns(facts)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    config = UpdateConfig(**OURS, facts_per_relation=2, intra_facts=2, inter_facts=2, seed=4)
    result = update_facts(tiny, refined, facts, RELATIONS, config)
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    table = result.table
    assert len(table) > 0 and (table.groupby("relation").fact_id.nunique() <= 2).all()
    for fact_id, rows in table.groupby("fact_id"):
        kn, rnd = rows.set_index("neuron_set").loc["knowledge"], rows.set_index("neuron_set").loc["random"]
        assert kn.n_neurons == rnd.n_neurons == 2  # the shared (0, 0) is dropped
        assert not {tuple(n) for n in rnd.neurons} & {tuple(n) for n in kn.neurons}
        assert kn.top1_before == kn.old_object != kn.new_object  # a learned fact, a different target
    assert (table.success <= table.changed).all()  # success implies a change
    assert (table[table.success].top1_after == table[table.success].new_object).all()
    # the table's perplexities are those of its prompts
    row = table.iloc[0]
    sel = result.ppl_prompts[(result.ppl_prompts.fact_id == row.fact_id) & (result.ppl_prompts.neuron_set == row.neuron_set)]
    assert row.ppl_intra_after == pytest.approx(perplexity(sel[sel.scope == "intra"].p_after.tolist()))
    summary = {s.neuron_set: s for s in result.summary}
    assert summary["knowledge"].n_edits == table.fact_id.nunique() and summary["random"].seed == 4
    assert summary["knowledge"].change_rate == pytest.approx(100 * table[table.neuron_set == "knowledge"].changed.mean())
    # beyond the paper: each edit is also judged on the fact's other prompts (not the edited one)
    para = result.paraphrases
    for (fact_id, name), rows in para.groupby(["fact_id", "neuron_set"]):
        edited = table[(table.fact_id == fact_id) & (table.neuron_set == name)].template_id.item()
        assert edited not in set(rows.template_id) and len(rows) == len(RELATIONS[fact_id.split("/")[0]].templates) - 1
    assert (para.success <= para.changed).all()
    kn_para = para[para.neuron_set == "knowledge"]
    assert summary["knowledge"].paraphrase_success_rate == pytest.approx(100 * kn_para.success.mean())
    intra = result.ppl_prompts[(result.ppl_prompts.scope == "intra") & (result.ppl_prompts.neuron_set == "random")]
    assert summary["random"].intra_changed_rate == pytest.approx(100 * intra.top1_changed.mean())
    # same seed, same run; every skipped fact has its reason
    assert result.table.equals(update_facts(tiny, refined, facts, RELATIONS, config).table)
    assert "only 2 of 2" not in " ".join(result.skipped.reason)


def test_a_run_resumed_from_saved_relations_equals_one_run(tiny, tmp_path):
    """Relations saved as they finish (``on_relation``, written to Parquet by ``PartialShard`` and read back)
    and given to a rerun as ``resume`` are taken, not edited again; the edits after them keep their numbers
    and their control draws, so the resumed result equals one uninterrupted run, non-KN controls included."""
    from kn_lib.experiments.controls import NON_KN_CONTROLS
    from kn_lib.run.partial import PartialShard

    facts = learned_facts(tiny)
    config = UpdateConfig(**OURS, facts_per_relation=2, intra_facts=2, inter_facts=2, seed=4, controls=NON_KN_CONTROLS)
    partial = PartialShard.of(tmp_path, "ig")
    whole = update_facts(tiny, _kns(facts), facts, RELATIONS, config, on_relation=partial.save)
    saved = partial.finished()
    assert sorted(saved) == ["P19", "P36"] and set(whole.table.relation) <= set(saved)  # a relation without edits too
    first = whole.table.relation.iloc[0]
    marked = {**saved[first], "table": saved[first]["table"].assign(p_new_after=0.125)}  # resumed, not remeasured
    resumed = update_facts(tiny, _kns(facts), facts, RELATIONS, config, resume={first: marked})
    assert (resumed.table[resumed.table.relation == first].p_new_after == 0.125).all()
    expected = whole.table.assign(p_new_after=whole.table.p_new_after.where(whole.table.relation != first, 0.125))
    pd.testing.assert_frame_equal(resumed.table, expected)
    pd.testing.assert_frame_equal(resumed.ppl_prompts, whole.ppl_prompts)
    pd.testing.assert_frame_equal(resumed.skipped, whole.skipped)
    assert set(whole.table.neuron_set) == {"knowledge", "random", *NON_KN_CONTROLS}


def test_zero_lambdas_change_nothing(tiny_bert):
    facts = learned_facts(tiny_bert)
    result = update_facts(tiny_bert, _kns(facts), facts, RELATIONS, UpdateConfig(**OURS, lambda1=0.0, lambda2=0.0, random_control=False, controls=()))
    t = result.table
    assert len(t) > 0 and not t.changed.any() and not t.success.any()
    assert (t.p_new_after == t.p_new_before).all() and (t.ppl_inter_after == t.ppl_inter_before).all()
    assert [s.neuron_set for s in result.summary] == ["knowledge"]
    # nothing edited: paraphrases keep their answers, no other fact of the relation changes its answer
    para = result.paraphrases
    assert len(para) > 0 and not para.success.any() and (para.changed == ~para.correct_before).all()
    assert result.summary[0].intra_changed_rate == 0.0 and not result.ppl_prompts.top1_changed.any()


def test_unusable_inputs_are_reported(tiny_llama):
    facts = learned_facts(tiny_llama)
    shared_only = refined_table({f["fact_id"]: [(0, 0)] for f in facts})
    result = update_facts(tiny_llama, shared_only, facts, RELATIONS, UpdateConfig(**OURS))
    assert len(result.table) == 0
    reasons = " | ".join(result.skipped.reason)
    assert "no knowledge neuron shared by fewer than 10% of the relation's other facts" in reasons
    assert "only 0 of 10 facts could be edited" in reasons
    # one prompt is drawn per fact; a wrong answer to it skips the fact (rome, london, berlin are unknown)
    unknown = update_facts(tiny_llama, _kns(facts), facts, RELATIONS, UpdateConfig(**OURS, facts_per_relation=100))
    wrong = unknown.skipped[unknown.skipped.reason == "the model answers the drawn prompt wrongly"]
    assert {"P19/10", "P19/11", "P19/12"} <= set(wrong.fact_id) and wrong["item"].str.startswith("template ").all()
    none = update_facts(tiny_llama, refined_table({}), facts, RELATIONS, UpdateConfig(**OURS))
    assert set(none.skipped.reason) == {"relation without knowledge neurons"}
    multi = facts + [{"fact_id": "P19/20", "relation": "P19", "subject": "bob", "object": "new rome"}]
    result = update_facts(tiny_llama, _kns(multi), multi, RELATIONS, UpdateConfig(**OURS, facts_per_relation=100))
    assert any("multi-token object" in r for r in result.skipped.reason)


def test_sign_aware_edits_run_and_are_recorded(tiny_llama):
    facts = learned_facts(tiny_llama)
    result = update_facts(tiny_llama, _kns(facts), facts, RELATIONS, UpdateConfig(**OURS, sign_aware=True, facts_per_relation=1))
    assert len(result.table) > 0 and result.table.sign_aware.all()


@pytest.mark.integration
def test_update_a_fact_on_the_real_model(real_kn):
    """P37/11 (Haiti, official language: French -> Spanish) through its two integrated-gradient neurons.

    Measured: the paper's edit (lambda1 = 1, lambda2 = 8) sends p(French) and p(Spanish) both to ~0 (top-1
    becomes " a"): neuron (25, 567) fires at -17 on this prompt, so its edit pushes away from Spanish,
    and eight slot lengths overshoot. Flipping the edit by the activation's sign with lambda2 = 2 makes
    Spanish the top-1 answer (p ~ 0.997).
    """
    saved = all_weights(real_kn.adapter)
    # one prompt is drawn per fact (official); seed 4 draws template 1, which the model answers correctly
    # (seed 0 draws template 5, answered wrongly: the fact would be skipped)
    config = UpdateConfig(**OURS, facts_per_relation=1, intra_facts=1, inter_facts=1, seed=4)
    result = update_facts(real_kn.adapter, real_kn.ig.refined, real_kn.facts, real_kn.relations, config)
    signed = update_facts(real_kn.adapter, real_kn.ig.refined, real_kn.facts, real_kn.relations,
                          UpdateConfig(**OURS, facts_per_relation=1, intra_facts=1, inter_facts=1, lambda2=2.0, sign_aware=True,
                                       random_control=False, controls=(), seed=4))
    assert same_weights(real_kn.adapter, saved)
    for r in (result, signed):
        print(*r.summary, describe(r.table.drop(columns=["neurons", "model", "seed"]).T), describe(r.skipped), sep="\n")
    # one edit, four neuron sets: knowledge, uniform random, and the two matched controls
    assert result.table.fact_id.unique().tolist() == ["P37/11"] and len(result.table) == 4
    assert result.table.neuron_set.tolist() == ["knowledge", "random", "random-layer", "activation-matched"]
    kn = result.table.neurons.iloc[0]
    for name in ("random-layer", "activation-matched"):  # same layers as the edited neurons, none of the fact's KNs
        ctrl = result.table.set_index("neuron_set").loc[name, "neurons"]
        assert sorted(l for l, _ in ctrl) == sorted(l for l, _ in kn) and not {tuple(n) for n in ctrl} & {tuple(n) for n in kn}
    assert result.table.new_object.unique().tolist() == ["Spanish"]
    assert result.skipped.relation.tolist() == ["P106"]  # no integrated-gradient neurons searched there
    assert signed.table.success.all()


def test_delta_ppl_averages_log_perplexities_per_edit_and_stays_finite_in_log_space():
    """Worked by hand: edit A has prompts p = 1/2, 1/8 (log PPL = (ln 2 + ln 8) / 2 = ln 4), edit B one prompt
    p = 1/16 (ln 16); official PPL = exp((ln 4 + ln 16) / 2) = 8 (pooled over the 3 prompts it would be
    exp((ln 2 + ln 8 + ln 16) / 3) = 2^(8/3)). After: one probability underflows to 0."""
    import math

    import pandas as pd

    from kn_lib.experiments.update_summary import delta_ppl, median_delta_ppl

    frame = pd.DataFrame({"fact_id": ["A", "A", "B"], "p_before": [0.5, 0.125, 0.0625], "p_after": [0.5, 0.125, 0.0],
                          "logp_before": [math.log(0.5), math.log(0.125), math.log(0.0625)],
                          "logp_after": [math.log(0.5), math.log(0.125), -200.0]})
    same = frame.assign(p_after=frame.p_before, logp_after=frame.logp_before)
    assert delta_ppl(same) == 0.0
    assert delta_ppl(frame.assign(p_after=frame.p_before / 2, logp_after=frame.logp_before - math.log(2))) == pytest.approx(8.0)
    assert delta_ppl(frame) == math.inf  # p = 0 in float32
    finite = delta_ppl(frame, "logp")
    assert math.isfinite(finite) and finite == pytest.approx(math.exp((math.log(4) + 200) / 2) - 8)
    assert median_delta_ppl(frame) == pytest.approx((0.0 + math.exp(200) - 16) / 2)


@pytest.mark.parametrize("sampling", ["official", "ours"])
def test_held_out_edits_are_judged_on_the_allowed_prompts_and_controls_avoid_the_given_neurons(tiny, sampling):
    """``edit_templates`` limits the prompt an edit is drawn and judged on (a fact's selection half); every
    other prompt of the fact is still read as a paraphrase; ``avoid`` keeps the non-KN controls off more
    neurons than the sample's own knowledge neurons."""
    from kn_lib.experiments.controls import NON_KN_CONTROLS

    facts = learned_facts(tiny)
    config = UpdateConfig(selection="ours", sampling=sampling, facts_per_relation=2, intra_facts=2, inter_facts=2, seed=1,
                          controls=NON_KN_CONTROLS)
    avoid = {(layer, n) for layer in range(tiny.n_layers) for n in range(0, tiny.n_neurons, 2)}  # every even neuron
    allowed = {f["fact_id"]: [0] for f in facts}
    result = update_facts(tiny, _kns(facts), facts, RELATIONS, config, edit_templates=allowed, avoid=avoid)
    assert len(result.table) > 0 and set(result.table["template_id"]) == {0}
    assert set(result.paraphrases["template_id"]) == {1}  # the other prompt, read after the same edit
    controls = result.table[result.table["neuron_set"].isin(NON_KN_CONTROLS)]
    used = {tuple(n) for ns in controls["neurons"] for n in ns}
    assert used and not used & avoid
    nothing = update_facts(tiny, _kns(facts), facts, RELATIONS, config, edit_templates={})  # no prompt allowed
    assert len(nothing.table) == 0


def test_a_stored_edit_replays_to_its_stored_answer(tiny):
    """``edit_replay.replay_edit`` redoes a table row of ``update_facts`` from the row alone (template,
    subject, answers, neurons) and gives the stored top-1 answer, with every weight restored."""
    from kn_lib.experiments.edit_replay import replay_edit

    facts = learned_facts(tiny)
    result = update_facts(tiny, _kns(facts), facts, RELATIONS, UpdateConfig(**OURS, facts_per_relation=2, seed=2))
    by_id = {f["fact_id"]: f for f in facts}
    before = all_weights(tiny)
    assert len(result.table) > 0
    for row in result.table.itertuples():
        template = RELATIONS[row.relation].templates[row.template_id]
        replayed = replay_edit(tiny, template, by_id[row.fact_id]["subject"], row.old_object, row.new_object, row.neurons)
        assert (replayed.top1_after, replayed.changed, replayed.success) == (row.top1_after, row.changed, row.success)
    assert same_weights(tiny, before)
