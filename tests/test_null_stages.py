"""The nulls (``experiments.nonsense_prompts``, ``run.null_stages``) on tiny random models: the nonsense
prompt generator is seeded, keeps the length, the answer position and the special tokens, and never holds
the subject's or the answer's words nor the answer's token; the refined set on nonsense prompts is the
pipeline's own rule; ``kn nonsense`` and ``kn redundancy`` account for every fact and rerun from their shards."""

from __future__ import annotations

import os
import random

import pytest

from conftest import MIRROR, run_kn
from kn_lib.attribution import IGConfig, integrated_gradients_many
from kn_lib.experiments.evaluation import Prompt
from kn_lib.experiments.nonsense_prompts import NonsenseConfig, _word_tokens, nonsense_null, nonsense_prompt
from kn_lib.refine import coarse_neurons, refine_fact

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
pytestmark = pytest.mark.usefixtures("one_thread")


def test_nonsense_prompts_are_seeded_same_length_and_never_hold_the_subject_or_answer(tiny):
    subject, answer = "alice", "paris"
    prompt = tiny.encode("[X] lives in [Y] .", subject, answer)
    words = {w for _, w in _word_tokens(tiny.tokenizer)}
    assert {subject, answer} <= words  # the pool would offer them: the exclusion is what keeps them out
    special = set(tiny.tokenizer.all_special_ids)
    for seed in range(30):
        made = nonsense_prompt(tiny, prompt, subject, answer, random.Random(seed))
        again = nonsense_prompt(tiny, prompt, subject, answer, random.Random(seed))
        assert made.input_ids.tolist() == again.input_ids.tolist()
        assert len(made.input_ids) == len(prompt.input_ids)
        assert (made.answer_pos, made.target_id) == (prompt.answer_pos, prompt.target_id)
        for original, new in zip(prompt.input_ids.tolist(), made.input_ids.tolist()):
            assert (original in special) == (new in special) and (original not in special or original == new)
        text = made.text.lower().split()
        assert subject not in text and answer not in text
        body = [t for i, t in enumerate(made.input_ids.tolist()) if not (tiny.family == "masked" and i == made.answer_pos)]
        assert prompt.target_id not in body
    assert len({tuple(nonsense_prompt(tiny, prompt, subject, answer, random.Random(s)).input_ids.tolist()) for s in range(30)}) > 20


def test_the_null_refines_the_nonsense_prompts_with_the_pipelines_rule(tiny_llama):
    fact = {"fact_id": "P1/0", "relation": "P1", "subject": "alice", "object": "paris"}
    templates = ["[X] lives in [Y] .", "[X] was born in [Y] .", "the city of [X] is [Y] .", "[X] is from [Y] ."]
    prompts = [Prompt("P1/0", "P1", t, tiny_llama.encode(s, "alice", "paris")) for t, s in enumerate(templates)]
    config = NonsenseConfig(ig=IGConfig(steps=3), seed=4)
    table = nonsense_null(tiny_llama, {"P1/0": prompts}, {"P1/0": fact}, {"P1/0": [(0, 1), (2, 5)]}, {"P1": 0.5}, config)
    row = table.iloc[0]
    from kn_lib.experiments.evaluation import seeded_rng

    made = [nonsense_prompt(tiny_llama, p.encoded, "alice", "paris", seeded_rng(4, f"P1/0/{p.template_id}/nonsense")) for p in prompts]
    coarse = [coarse_neurons(s, 0.2) for s in integrated_gradients_many(tiny_llama, made, config=IGConfig(steps=3))]
    expected = refine_fact(coarse, 0.5, "official", 3)
    assert row["n_refined_nonsense"] == len(expected) and row["n_shared"] == len(expected & {(0, 1), (2, 5)})
    assert row["n_refined_real"] == 2 and row["n_prompts"] == 4 and 0 <= row["p_answer_nonsense"] <= 1
    assert "alice" not in row["example"].split() and "paris" not in row["example"].split()


@pytest.mark.parametrize("stage,tables", [("nonsense", ("table",)), ("redundancy", ("degenerate", "common"))])
def test_the_null_stages_account_for_every_fact_and_rerun_from_their_shards(stage, tables, tmp_path, capsys):
    from kn_lib.run import results

    common = ["--model", "tiny-random-llama", "--preset", "smoke", "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    assert run_kn(capsys, "run", *common)[0] == 0
    code, out, err = run_kn(capsys, stage, *common)
    assert code == 0, err
    assert "(2 computed, 0 reused)" in out
    for table in tables:
        assert len(results.load("tiny-random-llama", stage, table, preset="smoke", root=tmp_path))
    code, out, _ = run_kn(capsys, stage, *common)
    assert code == 0 and "(0 computed, 2 reused)" in out


def test_a_bad_null_option_fails_in_one_line(tmp_path, capsys):
    common = ["--model", "tiny-random-llama", "--preset", "smoke", "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    assert run_kn(capsys, "run", *common)[0] == 0
    code, _, err = run_kn(capsys, "redundancy", *common, "--max-share", "1.5")
    assert code == 2 and "--max-share must lie in (0, 1)" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_kn(capsys, "nonsense", *common, "--null-facts", "0")
    assert code == 2 and "--null-facts must be >= 1" in err
