"""Symmetric and inverse edits (Niu et al. 2024) on tiny models: reverse look-ups, rows and skips, weights
restored, the measurements against a manual edit, and a planted edit whose new reverse holds."""

import importlib

import pytest
import torch

from kn_lib.adapters import EncodedPrompt
from kn_lib.data import Relation
from kn_lib.experiments.controls import CONTROLS
from kn_lib.experiments.evaluation import answer_distribution
from kn_lib.experiments.interventions import edited_value_slots, updated_value_slots, value_slot
from kn_lib.experiments.symmetric_edits import (
    REVERSE, ReverseIndex, SymmetryConfig, find_reverse, reverse_relation, symmetric_edits,
)
from tiny_facts import FACTS, RELATIONS, refined_table

sym = importlib.import_module("kn_lib.experiments.symmetric_edits")  # the module (the package exports a function of that name)

pytestmark = pytest.mark.usefixtures("one_thread")

ALL_RELATIONS = {
    **RELATIONS,  # P19 (no reverse) and P36 (capital), three templates each
    "P1376": Relation("P1376", "capital of", "N-1", ("[X] is the capital of [Y] .", "[X] is the capital city of [Y] .",
                                                     "[Y] has its capital [X] .")),
    "P47": Relation("P47", "shares border with", "N-M", ("[X] shares a border with [Y] .", "[X] is next to [Y] .")),
}
EXTRA = [
    {"fact_id": "P1376/0", "relation": "P1376", "subject": "paris", "object": "france"},
    {"fact_id": "P1376/1", "relation": "P1376", "subject": "london", "object": "england"},
    {"fact_id": "P47/0", "relation": "P47", "subject": "france", "object": "germany"},
    {"fact_id": "P47/1", "relation": "P47", "subject": "germany", "object": "france"},
    {"fact_id": "P47/2", "relation": "P47", "subject": "italy", "object": "england"},
    {"fact_id": "P36/4", "relation": "P36", "subject": "the italy", "object": "rome"},  # X is two tokens
]
ALL_FACTS = FACTS + EXTRA
NO_KN = "P36/2"
KNS = {f["fact_id"]: [(2, 3 + i), (1, 7 + i)] for i, f in enumerate(ALL_FACTS) if f["fact_id"] != NO_KN}
EDITED = {"P36/0", "P36/1", "P36/3", "P1376/0", "P1376/1", "P47/0", "P47/1", "P47/2"}
LOOSE = SymmetryConfig(require_correct=False)  # tiny random models rarely answer correctly


def test_reverse_relations():
    assert reverse_relation("P36") == "P1376" and reverse_relation("P1376") == "P36"
    assert all(reverse_relation(r) == r for r in ("P47", "P530", "P190"))
    assert reverse_relation("P19") is None
    assert all(REVERSE[REVERSE[r]] == r for r in REVERSE)  # reversing twice gives the relation back


def test_find_reverse():
    capital = next(f for f in FACTS if f["fact_id"] == "P36/0")  # (france, P36, paris)
    assert find_reverse(capital, ALL_FACTS)["fact_id"] == "P1376/0"  # (paris, P1376, france)
    assert find_reverse(EXTRA[0], ALL_FACTS)["fact_id"] == "P36/0"
    assert find_reverse(capital, FACTS) is None  # the data hold no P1376 fact
    germany = next(f for f in FACTS if f["fact_id"] == "P36/3")
    assert find_reverse(germany, ALL_FACTS) is None  # no (berlin, P1376, germany)
    index = ReverseIndex(ALL_FACTS)
    assert index.find(EXTRA[2])["fact_id"] == "P47/1" and index.find(EXTRA[3])["fact_id"] == "P47/0"  # self-reverse
    assert index.find(EXTRA[4]) is None  # (england, P47, italy) is absent
    assert index.find({"fact_id": "x", "relation": "P36", "subject": "paris", "object": "france"}) is None  # wrong direction
    assert index.find(FACTS[0]) is None  # P19 has no reverse relation


def _weights(adapter):
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def test_rows_skips_weights_and_summary(tiny):
    before = _weights(tiny)
    calls = []
    result = symmetric_edits(tiny, refined_table(KNS), ALL_FACTS, ALL_RELATIONS, LOOSE, progress=calls.append)
    after = _weights(tiny)
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit for bit
    assert sum(calls) == len(ALL_FACTS)
    t = result.table
    assert sorted(zip(t.fact_id, t.neuron_set)) == sorted((f, s) for f in EDITED for s in ("knowledge", *CONTROLS))
    assert {"model", "method", "seed"} <= set(t.columns) and {"model", "method", "seed"} <= set(result.prompts.columns)
    assert (t.reverse_relation == t.relation.map(REVERSE)).all()
    assert dict(zip(t.fact_id, t.reverse_in_data)) == {f: f not in ("P36/3", "P47/2") for f in EDITED}
    assert (t.new_object != t.old_object).all() and (t.new_object != t.subject).all()  # never Y' = X on P47
    for column in ("new_reverse_before", "new_reverse_after", "old_reverse_before", "old_reverse_after"):
        assert t[column].between(0, 1).all()
    # one prompt row per (fact, set, query, template); the reverse rates are their means
    p = result.prompts
    assert not p.duplicated(["fact_id", "neuron_set", "query", "template_id"]).any()
    assert set(p["query"]) == {"new-reverse", "old-reverse", "paraphrase"}
    for row in t.itertuples():
        mine = p[(p.fact_id == row.fact_id) & (p.neuron_set == row.neuron_set)]
        new = mine[mine["query"] == "new-reverse"]
        assert len(new) == row.n_reverse_prompts and new.correct_after.mean() == row.new_reverse_after
        assert mine[mine["query"] == "old-reverse"].correct_before.mean() == row.old_reverse_before
        assert new.p_answer_after.mean() == pytest.approx(row.p_x_new_reverse_after)
        assert set(new["answer"]) == {row.subject} and set(mine[mine["query"] == "paraphrase"]["answer"]) == {row.new_object}
        assert row.template_id not in set(mine[mine["query"] == "paraphrase"].template_id)  # the edited prompt is not one
    skips = result.skipped
    reasons = {(r.relation, r.fact_id if isinstance(r.fact_id, str) else None): r.reason for r in skips.itertuples()
               if r.item is None or r.item != r.item}
    assert reasons[("P19", None)] == "not a symmetric or inverse relation"
    assert (skips.relation == "P19").sum() == 1  # once for the relation, not per fact
    assert reasons[("P36", NO_KN)] == "no refined knowledge neurons"
    assert reasons[("P36", "P36/4")] == "reverse answer X is several tokens"
    s = result.summary
    assert (s.model, s.method, s.seed, s.n_edits) == ("tiny", "hand", 0, len(EDITED))
    know = t[t.neuron_set == "knowledge"]
    assert s.knowledge_success == pytest.approx(know.success.mean() * 100)
    assert s.activation_matched_new_reverse_after == pytest.approx(t[t.neuron_set == "activation-matched"].new_reverse_after.mean() * 100)
    assert s.old_reverse_before == pytest.approx(know.old_reverse_before.mean() * 100)
    assert s.n_edits_old_reverse_known == (know.old_reverse_before >= 0.5).sum()
    again = symmetric_edits(tiny, refined_table(KNS), ALL_FACTS, ALL_RELATIONS, LOOSE)
    assert again.table.drop(columns="neurons").equals(t.drop(columns="neurons"))  # seeded


def _learned(adapter, relation: str = "P47") -> list[dict]:
    """Facts the tiny random model "knows": each subject's object is the model's own top-1 on template 0 (on
    P47 the model answers template 0 and 1 differently, so only template 0 is right)."""
    facts = []
    for i, subject in enumerate(("france", "england", "italy", "germany")):
        prompt = adapter.encode(ALL_RELATIONS[relation].templates[0], subject, "the")
        top = adapter.tokenizer.convert_ids_to_tokens(int(answer_distribution(adapter, prompt).argmax()))
        if top.isalpha() and top != subject:
            facts.append({"fact_id": f"{relation}/{20 + i}", "relation": relation, "subject": subject, "object": top})
    return facts


def test_missing_reverse_templates_and_known_facts(tiny_llama):
    capital = [f for f in FACTS if f["relation"] == "P36"]
    result = symmetric_edits(tiny_llama, refined_table(KNS), capital, RELATIONS, LOOSE)  # no P1376 templates
    assert result.table.empty and "no templates of the reverse relation P1376" in set(result.skipped.reason)
    assert result.summary.n_edits == 0
    # require_correct: a fact is edited only on a prompt the model answers correctly, else skipped as not known
    learned = _learned(tiny_llama)
    assert learned
    facts = learned + [f for f in ALL_FACTS if f["relation"] == "P47"]
    kns = {f["fact_id"]: [(2, i), (1, i)] for i, f in enumerate(facts)}
    strict = symmetric_edits(tiny_llama, refined_table(kns), facts, ALL_RELATIONS, SymmetryConfig(controls=()))
    edited = dict(zip(strict.table.fact_id, strict.table.template_id))
    not_known = set(strict.skipped.loc[strict.skipped.reason.str.startswith("not known"), "fact_id"])
    assert {f["fact_id"] for f in learned} <= set(edited)
    for fact in facts:
        templates = ALL_RELATIONS[fact["relation"]].templates
        right = {t for t, template in enumerate(templates) if template.index("[X]") < template.index("[Y]")
                 and int(answer_distribution(tiny_llama, tiny_llama.encode(template, fact["subject"], fact["object"])).argmax())
                 == tiny_llama.answer_token(fact["object"], template)}
        assert (edited[fact["fact_id"]] in right) if right else fact["fact_id"] in not_known
    with pytest.raises(ValueError, match="unknown control"):
        SymmetryConfig(controls=("uniform",))


def test_measurements_match_a_manual_edit(tiny_bert):
    """Redo one knowledge-neuron edit by hand (interventions directly) and read the prompts one at a time."""
    fact = next(f for f in ALL_FACTS if f["fact_id"] == "P36/0")
    result = symmetric_edits(tiny_bert, refined_table(KNS), ALL_FACTS, ALL_RELATIONS, SymmetryConfig(require_correct=False, lambda2=40))
    row = result.table.query("fact_id == 'P36/0' and neuron_set == 'knowledge'").iloc[0]
    edited = tiny_bert.encode(ALL_RELATIONS["P36"].templates[row.template_id], "france", "paris")
    new_id = tiny_bert.answer_token(row.new_object)
    reverse = [tiny_bert.encode(t, subject, "france") for subject in (row.new_object, "paris") for t in ALL_RELATIONS["P1376"].templates]
    top = lambda prompt: int(answer_distribution(tiny_bert, prompt).argmax())  # noqa: E731
    rate = lambda prompts: sum(top(q) == q.target_id for q in prompts) / len(prompts)  # noqa: E731
    assert row.new_reverse_before == rate(reverse[:3]) and row.old_reverse_before == rate(reverse[3:])
    slots = updated_value_slots(tiny_bert, KNS["P36/0"], edited.target_id, new_id, 1.0, 40.0)
    with edited_value_slots(tiny_bert, slots):
        assert row.success == (top(edited) == new_id)
        assert row.new_reverse_after == rate(reverse[:3]) and row.old_reverse_after == rate(reverse[3:])
        p_x = sum(answer_distribution(tiny_bert, q)[q.target_id].item() for q in reverse[:3]) / 3
    assert row.p_x_new_reverse_after == pytest.approx(p_x, rel=1e-4)
    assert fact["object"] == row.old_object


def test_a_planted_edit_whose_new_reverse_holds_is_counted(tiny_llama, monkeypatch):
    """A last-layer neuron fires one way on "london is the capital (city) of" and the other way on "paris is
    ...". Planted to write -"france", the old reverse holds and the new does not; the edit of P36/0 (france:
    paris -> london) is replaced by one writing +"france" through it, so the new reverse must hold on every
    prompt after the edit (rate 1) and the old reverse on none (rate 0)."""
    capital = [f for f in FACTS if f["fact_id"] in ("P36/0", "P36/1")]  # Y' of P36/0 can only be london
    relations = {"P36": RELATIONS["P36"], "P1376": Relation("P1376", "capital of", "N-1", ALL_RELATIONS["P1376"].templates[:2])}
    new = [tiny_llama.encode(t, "london", "france") for t in relations["P1376"].templates]
    old = [tiny_llama.encode(t, "paris", "france") for t in relations["P1376"].templates]
    layer = tiny_llama.n_layers - 1
    a_new = torch.stack([tiny_llama.activations(q)[layer] for q in new])
    a_old = torch.stack([tiny_llama.activations(q)[layer] for q in old])
    sign = torch.sign(a_new[0])
    opposite = (torch.sign(a_new) == sign).all(0) & (torch.sign(a_old) == -sign).all(0)
    assert opposite.any()
    smallest = torch.cat([a_new, a_old]).abs().min(0).values
    j = int(torch.where(opposite, smallest, torch.tensor(-1.0)).argmax())
    unembedding = tiny_llama.model.get_output_embeddings().weight[new[0].target_id].detach()
    toward_x = sign[j] * 50.0 * unembedding / unembedding.norm() / smallest[j]  # +50 along "france" on the new reverse
    real, calls = updated_value_slots, []

    def plant(adapter, neurons, old_id, new_id, lambda1=1.0, lambda2=8.0, signs=None):
        calls.append((list(neurons), old_id, new_id))
        if list(neurons) == [(layer, j)]:
            return {(layer, j): toward_x}
        return real(adapter, neurons, old_id, new_id, lambda1, lambda2, signs)

    monkeypatch.setattr(sym, "updated_value_slots", plant)
    slot = value_slot(tiny_llama.projections[layer], j)
    original = slot.detach().clone()
    try:
        with torch.no_grad():
            slot.copy_(-toward_x)
        top = lambda q: int(answer_distribution(tiny_llama, q).argmax())  # noqa: E731
        assert [top(q) == q.target_id for q in new + old] == [False, False, True, True]
        result = symmetric_edits(tiny_llama, refined_table({"P36/0": [(layer, j)]}), capital, relations, LOOSE)
        assert torch.equal(slot, -toward_x)  # restored after the edit
    finally:
        with torch.no_grad():
            slot.copy_(original)
    row = result.table.query("neuron_set == 'knowledge'").iloc[0]
    assert row.new_object == "london" and row.n_reverse_prompts == 2
    assert calls[0] == ([(layer, j)], tiny_llama.answer_token("paris"), tiny_llama.answer_token("london"))  # Y -> Y'
    assert (row.new_reverse_before, row.old_reverse_before) == (0, 1)
    assert (row.new_reverse_after, row.old_reverse_after) == (1, 0)
    assert row.p_x_new_reverse_after > row.p_x_new_reverse_before
    prompts = result.prompts.query("neuron_set == 'knowledge' and query != 'paraphrase'")
    assert (prompts.correct_after == (prompts["query"] == "new-reverse")).all() and set(prompts.answer) == {"france"}
    s = result.summary
    assert (s.knowledge_new_reverse_after, s.knowledge_old_reverse_after, s.n_edits_old_reverse_known) == (100, 0, 1)
    controls = result.table.query("neuron_set != 'knowledge'")  # the controls' real edits leave the plant in charge
    assert (controls.new_reverse_after == 0).all() and (controls.old_reverse_after == 1).all()


def test_sign_aware_flips_the_edit_of_negatively_firing_neurons(tiny_llama, monkeypatch):
    """``sign_aware`` (ours): each edited neuron's change is multiplied by the sign of its activation on the
    edited prompt; the paper's edit (default) passes no signs."""
    seen = []
    real = sym.updated_value_slots

    def spy(adapter, neurons, old_id, new_id, lambda1, lambda2, signs=None):
        seen.append((list(neurons), signs))
        return real(adapter, neurons, old_id, new_id, lambda1, lambda2, signs)

    monkeypatch.setattr(sym, "updated_value_slots", spy)
    refined = refined_table(KNS)
    sym.symmetric_edits(tiny_llama, refined, ALL_FACTS, ALL_RELATIONS, LOOSE)
    assert seen and all(signs is None for _, signs in seen)
    seen.clear()
    result = sym.symmetric_edits(tiny_llama, refined, ALL_FACTS, ALL_RELATIONS, SymmetryConfig(require_correct=False, sign_aware=True))
    assert seen and all(set(signs) == set(neurons) and set(signs.values()) <= {1.0, -1.0} for neurons, signs in seen)
    edited = result.table[result.table["neuron_set"] == "knowledge"]
    first = edited.iloc[0]
    ids = tiny_llama.tokenizer(first["text"], return_tensors="pt").input_ids[0]
    acts = tiny_llama.activations(EncodedPrompt(ids, len(ids) - 1, 0, first["text"]))
    neurons, signs = seen[0]
    assert all(signs[n] == (1.0 if acts[n] >= 0 else -1.0) for n in neurons)
