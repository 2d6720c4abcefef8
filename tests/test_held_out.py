"""Held-out prompts and non-KN controls (issue: verdicts that survive a reviewer): the split is seeded, per
fact and disjoint; the refinement sees only the selection half; ``kn held-out`` tags every row with its
half and its controls never use a knowledge neuron of the sample; the non-KN controls avoid every
knowledge neuron and match the signed activation."""

from __future__ import annotations

import os
import random

import pandas as pd
import pytest
import torch

from conftest import MIRROR, run_kn
from kn_lib.experiments.controls import activation_matched_neurons, control_table, kn_overlap, matched_neurons
from kn_lib.experiments.held_out import selection_sets, split_templates, tag_halves

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_split_is_seeded_per_fact_disjoint_and_covers_every_prompt():
    ids = [0, 3, 4, 7, 8, 9, 11]
    sel, held = split_templates("P19/5", ids, seed=0)
    assert (sel, held) == split_templates("P19/5", list(reversed(ids)), seed=0)  # the fact's own draw, any order
    assert set(sel).isdisjoint(held) and sorted(sel + held) == ids and len(sel) == 4 and len(held) == 3
    assert any(split_templates("P19/5", ids, seed=s) != (sel, held) for s in range(1, 10))  # the seed matters
    assert len({tuple(split_templates(f"P19/{i}", ids)[0]) for i in range(30)}) > 5  # facts differ


def test_refinement_sees_only_the_selection_half():
    coarse = {"f": {0: {(1, 1)}, 1: {(1, 1)}, 2: {(2, 2)}, 3: {(2, 2)}}}
    split = {"f": ([0, 1], [2, 3])}
    assert selection_sets(coarse, split) == {"f": [{(1, 1)}, {(1, 1)}]}
    table = pd.DataFrame({"fact_id": ["f"] * 4, "template_id": [0, 1, 2, 3]})
    assert tag_halves(table, split)["half"].tolist() == ["selection", "selection", "held-out", "held-out"]


def test_non_kn_controls_avoid_every_knowledge_neuron_of_the_sample_and_match_the_sign():
    acts = torch.tensor([[0.0, 2.0, -2.0, 1.9, -1.95, 0.1]])
    # |a| matching pairs +2 with -2 (the closest magnitude); the signed match with +1.9
    assert activation_matched_neurons([(0, 1)], acts) == [(0, 2)]
    assert activation_matched_neurons([(0, 1)], acts, signed=True) == [(0, 3)]
    other_facts_kns = {(0, 3)}
    chosen = matched_neurons("activation-matched-non-kn", [(0, 1)], 6, [(0, 1)], lambda: random.Random(0), lambda: acts,
                             other_facts_kns)
    assert chosen == [(0, 5)]  # +1.9 is another fact's knowledge neuron: the next closest signed value, 0.1
    for seed in range(20):
        drawn = matched_neurons("random-layer-non-kn", [(0, 1)], 6, [(0, 1)], lambda: random.Random(seed), lambda: acts,
                                {(0, 0), (0, 2), (0, 3)})
        assert drawn[0] in {(0, 4), (0, 5)}


def test_a_non_kn_control_table_shares_no_neuron_with_the_sample(tiny_llama):
    rng = random.Random(3)
    rows = [{"fact_id": f"P{r}/{i}", "relation": f"P{r}", "layer": rng.randrange(tiny_llama.n_layers),
             "neuron": rng.randrange(8), "share": 1.0, "p": 0.7, "model": "tiny", "method": "ig"}
            for r in range(3) for i in range(6) for _ in range(2)]
    refined = pd.DataFrame(rows).drop_duplicates(["fact_id", "layer", "neuron"])
    legacy = control_table("random-layer", tiny_llama, refined, [], {}, seed=0)
    clean = control_table("random-layer-non-kn", tiny_llama, refined, [], {}, seed=0)
    assert kn_overlap(clean, refined)["any"] == 0 and kn_overlap(clean, refined)["n"] == len(refined)
    assert kn_overlap(legacy, refined)["n"] == len(refined)  # the legacy control only avoids the fact's own


def test_kn_held_out_tags_both_halves_and_keeps_controls_off_knowledge_neurons(tmp_path, capsys):
    from kn_lib.run import results

    common = ["--model", "tiny-random-llama", "--preset", "smoke", "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    assert run_kn(capsys, "run", *common)[0] == 0
    code, out, err = run_kn(capsys, "held-out", *common)
    assert code == 0, err
    assert "(2 computed, 0 reused)" in out
    table = results.load("tiny-random-llama", "held-out", "table", preset="smoke", root=tmp_path)
    refined = results.load("tiny-random-llama", "held-out", "refined", preset="smoke", root=tmp_path)
    assert set(table["half"]) <= {"selection", "held-out"} and set(table["neuron_set"]) >= {"knowledge"}
    for fact_id, rows in table[table["neuron_set"] == "knowledge"].groupby("fact_id"):
        sel, held = split_templates(fact_id, rows["template_id"].unique(), seed=0)
        assert set(rows.loc[rows["half"] == "held-out", "template_id"]) == set(held)
    kns = refined[refined["neuron_set"] == "knowledge"]
    committed = results.load("tiny-random-llama", "refine", "refined", preset="smoke", root=tmp_path)
    every_kn = set(zip(kns["layer"], kns["neuron"])) | set(zip(committed["layer"], committed["neuron"]))
    controls = refined[refined["neuron_set"] != "knowledge"]
    assert len(controls) == 2 * len(kns) > 0
    assert not set(zip(controls["layer"], controls["neuron"])) & every_kn
    assert run_kn(capsys, "held-out", *common)[1].count("(0 computed, 2 reused)") == 1


def test_kn_held_out_update_edits_on_the_selection_half_and_tags_paraphrases(tmp_path, capsys, monkeypatch):
    """The stage hands ``update_facts`` each fact's selection half as the prompts an edit may be judged on,
    the half-refined knowledge neurons, every knowledge neuron of the sample to avoid, and the sample's bags
    replaced by their halves'; the paraphrases come back tagged with their half."""
    import kn_lib.experiments as experiments
    from kn_lib.experiments import UpdateResult
    from kn_lib.run import results

    seen = {}
    real = experiments.update_facts

    def spy(adapter, refined, facts, relations, config, **kw):
        result = real(adapter, refined, facts, relations, config, **kw)
        seen[facts[0]["relation"]] = (refined, facts, kw)
        fact = facts[0]["fact_id"]  # a planted paraphrase row per template, to check the tagging
        planted = pd.DataFrame({"edit": 1, "fact_id": fact, "neuron_set": "knowledge", "template_id": range(8),
                                "correct_before": True, "changed": False, "success": False})
        return UpdateResult(result.table, result.ppl_prompts, planted, result.summary, result.skipped, result.config)

    monkeypatch.setattr(experiments, "update_facts", spy)
    common = ["--model", "tiny-random-llama", "--preset", "smoke", "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    assert run_kn(capsys, "run", *common)[0] == 0
    code, out, err = run_kn(capsys, "held-out-update", *common)
    assert code == 0, err
    assert "(2 computed, 0 reused)" in out and set(seen) == {"P30", "P36"}
    committed = results.load("tiny-random-llama", "refine", "refined", preset="smoke", root=tmp_path)
    prompts = results.load("tiny-random-llama", "attribute", "prompts", preset="smoke", root=tmp_path)
    for relation, (refined, facts, kw) in seen.items():
        assert kw["avoid"] >= set(zip(committed["layer"], committed["neuron"]))
        assert set(refined["relation"]) <= {relation}
        for f in facts:
            usable = prompts.loc[prompts["fact_id"] == f["fact_id"], "template_id"]
            sel, held = split_templates(f["fact_id"], usable, seed=0)
            assert kw["edit_templates"][f["fact_id"]] == sel
            own = refined[refined["fact_id"] == f["fact_id"]]
            assert set(kw["bags"][relation][f["fact_id"]]) == set(zip(own["layer"], own["neuron"]))
    para = results.load("tiny-random-llama", "held-out-update", "paraphrases", preset="smoke", root=tmp_path)
    for fact_id, rows in para.groupby("fact_id"):
        usable = prompts.loc[prompts["fact_id"] == fact_id, "template_id"]
        sel, held = split_templates(fact_id, usable, seed=0)
        assert set(rows.loc[rows["half"] == "held-out", "template_id"]) == set(held)
        assert set(rows.loc[rows["half"] == "selection", "template_id"]) == set(range(8)) - set(held)
