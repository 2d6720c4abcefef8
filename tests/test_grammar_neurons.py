"""Grammar neurons (Niu et al. 2024's re-test) on the tiny models: encoding of both pair forms, the
minimal-pair score by hand, consistent tables, seeded draws, and a planted neuron that carries the good
word beating both matched controls."""

import itertools
import math

import pytest
import torch

from kn_lib.adapters import UnusablePrompt
from kn_lib.attribution import IGConfig
from kn_lib.blimp import MinimalPair
from kn_lib.experiments.controls import CONTROLS
from kn_lib.experiments.evaluation import answer_log_distribution
from kn_lib.experiments.grammar_neurons import (
    GROUP_COLUMNS, TABLE_COLUMNS, GrammarConfig, encode_pair, grammar_neurons, pair_scores,
)
from kn_lib.experiments.interventions import scaled_activations, value_slot
from kn_lib.model_registry import TINY_WORDS
from kn_lib.pipeline import KNConfig

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = {w: i for i, w in enumerate(TINY_WORDS)}
KN = KNConfig(ig=IGConfig(steps=4), kn_low=1, kn_high=40)  # tiny random models have many coarse neurons
PREFIXES = [f"{s} {v}" for s, v in itertools.product(["alice", "bob", "carol", "dave"], ["was born in", "is located in"])]


def one(i, prefix, good="paris", bad="london", group="that+singular", paradigm="dn_1"):
    return MinimalPair(paradigm, i, "one_prefix", prefix, prefix, good, bad, group)


def two(i, good_prefix, bad_prefix, word="rome", group="plural-subject", paradigm="sv_2"):
    return MinimalPair(paradigm, i, "two_prefix", good_prefix, bad_prefix, word, word, group)


def pairs():
    """Two paradigms, three groups: 8 + 4 one-prefix pairs and 8 two-prefix pairs, and one unusable pair."""
    out = [one(i, p) for i, p in enumerate(PREFIXES)]
    out += [one(10 + i, p, "rome", "berlin", "this+singular") for i, p in enumerate(PREFIXES[:4])]
    out += [two(i, p, p.split()[0] + " has") for i, p in enumerate(PREFIXES)]
    return out + [one(99, "alice was", "paris city", "paris")]  # both words begin with "paris"


def test_encoding_one_prefix(tiny_llama):
    ep = encode_pair(tiny_llama, one(0, "alice was born in"))
    ids = [VOCAB[w] for w in ("<s>", "alice", "was", "born", "in")]
    assert ep.good.input_ids.tolist() == ids and ep.bad.input_ids.tolist() == ids
    assert ep.good.answer_pos == ep.bad.answer_pos == 4
    assert (ep.good.target_id, ep.bad.target_id) == (VOCAB["paris"], VOCAB["london"])


def test_encoding_two_prefix(tiny_llama):
    ep = encode_pair(tiny_llama, two(0, "alice was born in", "bob has", "rome city"))  # first token of the word
    assert ep.good.input_ids.tolist() == [VOCAB[w] for w in ("<s>", "alice", "was", "born", "in")]
    assert ep.bad.input_ids.tolist() == [VOCAB[w] for w in ("<s>", "bob", "has")] and ep.bad.answer_pos == 2
    assert ep.good.target_id == ep.bad.target_id == VOCAB["rome"]


def test_unusable_pairs(tiny_llama, tiny_bert):
    with pytest.raises(UnusablePrompt, match="same token"):
        encode_pair(tiny_llama, one(0, "alice was", "paris city", "paris"))
    with pytest.raises(UnusablePrompt, match="unknown"):
        encode_pair(tiny_llama, one(0, "alice was", "paris", "zebras"))
    masked = encode_pair(tiny_bert, one(0, "alice was born in"))
    assert tiny_bert.tokenizer.decode(masked.good.input_ids) == "[CLS] alice was born in [MASK] . [SEP]"
    assert masked.good.answer_pos == 5 and masked.good.target_id == VOCAB["paris"]
    with pytest.raises(UnusablePrompt, match="single wordpiece"):
        encode_pair(tiny_bert, one(0, "alice was", "paris city", "london"))


def test_scores_by_hand(tiny_llama):
    ep = encode_pair(tiny_llama, one(0, "alice was born in"))
    logp = answer_log_distribution(tiny_llama, ep.good)
    neurons = [(1, 3), (2, 7)]
    scores, p = pair_scores(tiny_llama, ep, [neurons])
    assert scores[0] == pytest.approx((logp[VOCAB["paris"]] - logp[VOCAB["london"]]).item(), abs=1e-5)
    assert p[0] == pytest.approx(logp[VOCAB["paris"]].exp().item(), rel=1e-4)
    with scaled_activations(tiny_llama, neurons, ep.good.answer_pos, 0.0):
        zeroed = answer_log_distribution(tiny_llama, ep.good)
    assert scores[1] == pytest.approx((zeroed[VOCAB["paris"]] - zeroed[VOCAB["london"]]).item(), abs=1e-5)
    ep2 = encode_pair(tiny_llama, two(0, "alice was born in", "bob has"))
    by_hand = answer_log_distribution(tiny_llama, ep2.good)[VOCAB["rome"]] - answer_log_distribution(tiny_llama, ep2.bad)[VOCAB["rome"]]
    assert pair_scores(tiny_llama, ep2)[0][0] == pytest.approx(by_hand.item(), abs=1e-5)


def test_tables_are_consistent(tiny_llama):
    weights = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    done = []
    config = GrammarConfig(kn=KN, prompts_per_group=5, eval_pairs=2, seed=1)
    result = grammar_neurons(tiny_llama, pairs(), config, progress=done.append)
    assert all(torch.equal(weights[k], v) for k, v in tiny_llama.model.state_dict().items())  # nothing edited for good
    assert sum(done) == 3 and result.summary.n_groups == 3
    for frame in (result.refined, result.coarse, result.table, result.thresholds, result.groups, result.skipped):
        assert {"model", "method", "seed"} <= set(frame.columns) and set(frame["seed"]) <= {1}
    assert list(result.table.columns[:len(TABLE_COLUMNS)]) == TABLE_COLUMNS
    assert list(result.groups.columns[:len(GROUP_COLUMNS)]) == GROUP_COLUMNS
    pair_rows = result.skipped.dropna(subset=["item"])
    assert pair_rows["item"].tolist() == ["pair 99"] and "same token" in pair_rows["reason"].iloc[0]
    groups = result.groups.set_index("fact_id")
    assert groups.loc["dn_1/that+singular", ["n_usable", "n_attribution", "n_eval"]].tolist() == [8, 5, 2]
    assert groups.loc["dn_1/this+singular", ["n_usable", "n_attribution", "n_eval"]].tolist() == [4, 4, 0]
    assert set(result.thresholds["relation"]) == {"dn_1", "sv_2"}
    for fact_id, g in groups.iterrows():
        attributed = set(result.coarse.query("fact_id == @fact_id")["template_id"])
        held = result.table.query("fact_id == @fact_id")
        assert len(attributed) <= g["n_attribution"] and not attributed & set(held["pair_id"])  # disjoint
        assert g["n_kn"] == len(result.refined.query("fact_id == @fact_id"))
        if g["n_kn"] and g["n_eval"]:
            assert len(held) == g["n_eval"] * (1 + len(CONTROLS))
            assert set(held["n_neurons"]) == {g["n_kn"]}
    # "this+singular" has no pair left to evaluate: logged, no rows
    assert "held-out" in " ".join(result.skipped.query("fact_id == 'dn_1/this+singular'")["reason"])
    t = result.table
    assert (t["flip"] == (t["correct_before"] & ~t["correct_after"])).all()
    assert (t["correct_before"] == (t["score_before"] > 0)).all()
    knowledge = t[t["neuron_set"] == "knowledge"]
    assert result.summary.knowledge_accuracy_after == pytest.approx(knowledge["correct_after"].mean())
    assert result.summary.accuracy_before == pytest.approx(knowledge["correct_before"].mean())
    again = grammar_neurons(tiny_llama, pairs(), config)
    assert again.table.equals(result.table) and again.coarse.equals(result.coarse)
    # a group's draw does not depend on the other groups of the run
    alone = grammar_neurons(tiny_llama, [p for p in pairs() if p.paradigm == "sv_2"], config)
    assert alone.coarse.reset_index(drop=True).equals(result.coarse.query("relation == 'sv_2'").reset_index(drop=True))


def test_group_without_knowledge_neurons_is_logged(tiny_llama):
    # two attributed pairs are fewer than the official rule's minimum count of 3: no refined neuron
    result = grammar_neurons(tiny_llama, [one(i, p) for i, p in enumerate(PREFIXES)], GrammarConfig(kn=KN, prompts_per_group=2))
    assert result.refined.empty and result.table.empty and result.summary.n_groups_with_kn == 0
    assert "no refined knowledge neuron" in result.skipped["reason"].iloc[0]
    with pytest.raises(ValueError, match="unknown control"):
        GrammarConfig(controls=("uniform",))


def test_a_planted_agreement_neuron_beats_both_controls(tiny_llama):
    """Plant one last-layer neuron whose value slot writes the good word's unembedding (scaled by its
    activation's sign on the pairs' prefixes), the bad word being one the unplanted model prefers. The
    pipeline must find it; zeroing the group's neurons must undo the preference (flip every pair) and
    lower the score log p(good) - log p(bad) far more than zeroing either matched control. (The tiny
    model's hidden states are small: a planted slot saturates p(good) at once, and a slot along
    "good minus bad" makes p(good) peak near 0 and then fall, which 4 IG steps read as a negative score.)"""
    prompts = [encode_pair(tiny_llama, one(0, p)).good for p in PREFIXES]
    logp = torch.stack([answer_log_distribution(tiny_llama, p) for p in prompts])
    bad = int(logp[:, VOCAB["the"]:].min(0).values.argmax()) + VOCAB["the"]  # a real word, preferred everywhere
    good = VOCAB["paris"] if bad != VOCAB["paris"] else VOCAB["london"]
    assert (logp[:, bad] > logp[:, good]).all()
    group = [one(i, p, TINY_WORDS[good], TINY_WORDS[bad]) for i, p in enumerate(PREFIXES)]
    layer = tiny_llama.n_layers - 1
    acts = torch.stack([tiny_llama.activations(p)[layer] for p in prompts])
    sign = torch.sign(acts.mean(0))
    index = int((acts * sign).min(0).values.argmax())  # the neuron firing most, with one sign, on every prefix
    unembedding = tiny_llama.model.get_output_embeddings().weight.detach()
    direction = unembedding[good]
    slot = value_slot(tiny_llama.projections[layer], index)
    saved = slot.detach().clone()
    try:
        with torch.no_grad():
            slot.copy_(sign[index] * 50.0 * direction / direction.norm() / acts[:, index].abs().mean())
        result = grammar_neurons(tiny_llama, group, GrammarConfig(kn=KN, prompts_per_group=4, eval_pairs=4))
    finally:
        with torch.no_grad():
            slot.copy_(saved)
    assert (layer, index) in set(zip(result.refined["layer"], result.refined["neuron"]))
    s = result.summary
    assert s.accuracy_before == 1.0 and s.knowledge_flip_rate == 1.0 and s.knowledge_accuracy_after == 0.0
    controls = [k.replace("-", "_") for k in CONTROLS]
    assert all(getattr(s, f"{k}_flip_rate") == 0.0 for k in controls), s
    # s goes from about +0.4 back to the unplanted -0.5; the controls move it by less than 1e-4
    assert s.knowledge_score_change < -0.5 and all(s.knowledge_score_change < getattr(s, f"{k}_score_change") - 0.5 for k in controls), s
    assert s.knowledge_p_change < -25 and all(abs(getattr(s, f"{k}_p_change")) < 5 for k in controls), s


def test_masked_model_runs(tiny_bert):
    group = [one(i, p) for i, p in enumerate(PREFIXES)] + [one(99, "alice was", "paris city", "london")]
    result = grammar_neurons(tiny_bert, group, GrammarConfig(kn=KN, prompts_per_group=5, eval_pairs=3, controls=("random-layer",)))
    assert result.groups["n_usable"].tolist() == [8] and "single wordpiece" in result.skipped["reason"].iloc[0]
    assert set(result.table["neuron_set"]) == {"knowledge", "random-layer"} and len(result.table) == 2 * 3
    assert math.isnan(result.summary.activation_matched_accuracy_after)  # a control not run
