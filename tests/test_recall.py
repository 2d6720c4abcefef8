"""`kn_lib.recall` and `kn screen`: every prompt asked once; p(answer), rank and top-1 as the model gives
them prompt by prompt, whatever the batch."""

from __future__ import annotations

import os

import pytest

from conftest import MIRROR
from kn_lib import data
from kn_lib.data import Relation
from kn_lib.pipeline import predict
from kn_lib.recall import recall_by_relation, screen_facts
from kn_lib.run import results
from kn_lib.run.registry import settings_for
from kn_lib.run.runner import run_stage

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEMPLATES = ("[X] was born in [Y] .", "[X] is from [Y] .", "the city of [Y] is where [X] was born .", "[X] , born in [Y] .")
FACTS = [
    {"fact_id": "P19/0", "relation": "P19", "subject": "alice", "object": "paris"},
    {"fact_id": "P19/1", "relation": "P19", "subject": "bob", "object": "london"},
    {"fact_id": "P19/2", "relation": "P19", "subject": "carol dave", "object": "rome"},
    {"fact_id": "P19/3", "relation": "P19", "subject": "dave", "object": "paris france"},  # multi-token answer
]


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_screen_matches_prompt_by_prompt(tiny, batch_size):
    relations = {"P19": Relation("P19", "place of birth", "N-1", TEMPLATES)}
    seen = []
    out = screen_facts(tiny, FACTS, relations, batch_size=batch_size, on_fact=seen.append)
    prompts, facts = out["prompts"], out["facts"]
    assert sum(seen) == len(FACTS)
    for row in prompts.itertuples():
        fact = next(f for f in FACTS if f["fact_id"] == row.fact_id)
        encoded = tiny.encode(TEMPLATES[row.template_id], fact["subject"], fact["object"])
        p, top1 = predict(tiny, encoded)
        assert row.p_answer == pytest.approx(p, rel=1e-4, abs=1e-7)
        assert row.correct == (top1 == encoded.target_id)
        logits = tiny.logits_at(encoded.input_ids[None], encoded.answer_pos)[0]
        assert row.rank == int((logits > logits[encoded.target_id]).sum()) + 1
        assert row.predicted == tiny.tokenizer.decode([top1])
    # causal models lose the template where [Y] precedes [X]; masked models keep all four
    expected = 3 if tiny.family == "causal" else 4
    assert prompts.groupby("fact_id").size().to_dict() == {"P19/0": expected, "P19/1": expected, "P19/2": expected}
    by = facts.set_index("fact_id")
    assert not by.loc["P19/3", "single_token"] and by.loc["P19/3", "n_prompts"] == 0
    assert by.loc["P19/0", "n_correct"] == prompts[prompts["fact_id"] == "P19/0"]["correct"].sum()
    assert list(facts["fact_id"]) == [f["fact_id"] for f in FACTS]


def test_known_flags_and_relation_summary():
    import pandas as pd

    from kn_lib.recall import fact_table

    prompts = pd.DataFrame({"fact_id": ["A/0"] * 3 + ["A/1"] * 2, "relation": "A", "template_id": [0, 1, 2, 0, 1],
                            "p_answer": [0.5, 0.1, 0.6, 0.2, 0.1], "rank": [1, 3, 1, 2, 1],
                            "correct": [True, False, True, False, True], "predicted": "x"})
    facts = [{"fact_id": "A/0", "relation": "A"}, {"fact_id": "A/1", "relation": "A"}, {"fact_id": "A/2", "relation": "A"}]
    table = fact_table(prompts, facts, {"A/0": True, "A/1": True, "A/2": False}).set_index("fact_id")
    assert table.loc["A/0", "most_correct"] and table.loc["A/0", "any_correct"]
    assert table.loc["A/1", "any_correct"] and not table.loc["A/1", "most_correct"]  # 1 of 2 is not more than half
    assert not table.loc["A/2", "any_correct"] and table.loc["A/2", "n_prompts"] == 0
    summary = recall_by_relation(table.reset_index(), prompts).set_index("relation")
    assert summary.loc["A", "facts"] == 3 and summary.loc["A", "single_token"] == 2 and summary.loc["A", "prompts"] == 5
    assert summary.loc["A", "prompt_accuracy"] == pytest.approx(3 / 5)
    assert summary.loc["A", "known_any"] == 1.0 and summary.loc["A", "known_most"] == 0.5


def test_screen_rejects_a_bad_batch(tiny_llama):
    with pytest.raises(ValueError, match="batch_size"):
        screen_facts(tiny_llama, FACTS, {"P19": Relation("P19", "", "", TEMPLATES)}, batch_size=0)


def test_screen_stage_asks_every_fact_and_resumes(tmp_path):
    settings = settings_for("tiny-random-llama", "paper", relations="P30,P140", device="cpu")
    summary = run_stage("screen", settings, tmp_path, progress=False)
    assert summary.shards_computed == 2
    facts = results.load("tiny-random-llama", "screen", root=tmp_path)
    prompts = results.load("tiny-random-llama", "screen", table="prompts", root=tmp_path)
    assert len(facts) == sum(len(data.load_facts([r])) for r in ("P30", "P140"))  # every fact, no sample
    assert facts["n_prompts"].sum() == len(prompts) and set(prompts["relation"]) <= {"P30", "P140"}
    assert (facts["model"] == "tiny-random-llama").all()
    again = run_stage("screen", settings, tmp_path, progress=False)
    assert again.shards_computed == 0 and again.shards_reused == 2


def test_known_facts_sample_follows_the_screen(tmp_path):
    """A known sample is the uniform order restricted to the facts the screen marks as known; its
    attribution shards live apart from the uniform sample's; without a screen it fails in words."""
    from kn_lib.run.registry import MissingInputs, RunSettings
    from kn_lib.run.search_stages import ATTRIBUTE

    uniform = settings_for("tiny-random-llama", "paper", relations="P30,P140", device="cpu", root=tmp_path)
    known = settings_for("tiny-random-llama", "paper", relations="P30,P140", facts_per_relation=5, known="any", root=tmp_path)
    with pytest.raises(MissingInputs, match="kn screen --preset paper"):
        known.sample()
    run_stage("screen", uniform, tmp_path, progress=False)
    facts = results.load("tiny-random-llama", "screen", root=tmp_path)
    marked = set(facts.loc[facts["single_token"] & facts["any_correct"], "fact_id"])
    assert marked and len(marked) < len(facts)  # the tiny model knows some facts, not all
    order = settings_for("tiny-random-llama", "paper", relations="P30,P140", root=tmp_path).sample()
    drawn_ids = []
    for relation, drawn in known.sample().items():
        expected = [f["fact_id"] for f in order[relation] if f["fact_id"] in marked][:5]
        assert [f["fact_id"] for f in drawn] == expected
        drawn_ids += expected
    assert len(drawn_ids) == min(5, len({f for f in marked if f.startswith("P30/")})) + min(5, len({f for f in marked if f.startswith("P140/")}))
    assert drawn_ids
    strict = settings_for("tiny-random-llama", "paper", relations="P30,P140", known="most", root=tmp_path)
    assert all(f["fact_id"] in set(facts.loc[facts["most_correct"], "fact_id"]) for fs in strict.sample().values() for f in fs)
    # separate attribution shards: the known sample chunks another order
    assert ATTRIBUTE.key_settings(known) != ATTRIBUTE.key_settings(settings_for("tiny-random-llama", "paper", relations="P30,P140"))
    assert "known" not in ATTRIBUTE.key_settings(uniform)  # uniform keys as before: committed results still load
    assert isinstance(known, RunSettings) and known.known == "any"


def test_known_option_is_checked():
    from kn_lib.run.registry import KnUsageError

    with pytest.raises(KnUsageError, match="--known"):
        settings_for("tiny-random-llama", "smoke", known="some")
    assert settings_for("tiny-random-llama", "known-facts", known="none").known is None
    assert settings_for("tiny-random-llama", "known-facts").known == "most"
