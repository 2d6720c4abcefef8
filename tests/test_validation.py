"""The library checks what it is given and says what it expected (issue 14's library-misuse rows)."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from conftest import MIRROR
from kn_lib import data, models
from kn_lib.pipeline import KNConfig, find_knowledge_neurons
from tiny_facts import FACTS, RELATIONS

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
FAST = KNConfig(method="activation")


@pytest.mark.parametrize("call", [data.load_relations, data.load_facts, data.load_prompts])
def test_a_str_where_a_list_of_relation_ids_is_expected(call):
    with pytest.raises(TypeError, match=r"expected a list of relation ids such as \['P36'\], got the str 'P36'"):
        call("P36")


def test_relation_ids_must_be_str():
    with pytest.raises(TypeError, match="expected relation ids"):
        data.load_relations([36])


def test_facts_as_a_dataframe_or_relations_as_a_list_give_the_same_result(tiny_llama):
    expected = find_knowledge_neurons(tiny_llama, FACTS, RELATIONS, FAST, progress=False)
    got = find_knowledge_neurons(tiny_llama, pd.DataFrame(FACTS), list(RELATIONS.values()), FAST, progress=False)
    pd.testing.assert_frame_equal(got.coarse, expected.coarse)
    pd.testing.assert_frame_equal(got.refined, expected.refined)


@pytest.mark.parametrize("facts, message", [
    ("P19/0", "expected facts: a list of dicts with fact_id, relation, subject, object"),
    (FACTS[0], "got a dict; wrap a single fact in a list"),
    ([("alice", "paris")], "fact 0: expected a dict with fact_id, relation, subject, object"),
    ([{"fact_id": "P19/0", "subject": "alice"}], "fact 0: missing relation, object"),
])
def test_bad_facts(tiny_llama, facts, message):
    with pytest.raises((TypeError, ValueError), match=message):
        find_knowledge_neurons(tiny_llama, facts, RELATIONS, FAST, progress=False)


@pytest.mark.parametrize("relations", ["P19", ["P19", "P36"], 19])
def test_bad_relations(tiny_llama, relations):
    with pytest.raises(TypeError, match=r"expected relations: \{id: Relation\} as load_relations returns"):
        find_knowledge_neurons(tiny_llama, FACTS, relations, FAST, progress=False)


@pytest.mark.parametrize("field, value, message", [
    ("p_step", 0, "p_step must be in"),
    ("p_step", -0.05, "p_step must be in"),
    ("threshold", -1, r"threshold t must be in \[0, 1\)"),
    ("threshold", 1.5, r"threshold t must be in \[0, 1\)"),
    ("p_start", 0, r"p_start must be in \(0, 1\]"),
    ("kn_low", 6.0, "need 0 <= kn_low <= kn_high"),
    ("method", "gradients", "method must be 'ig' or 'activation'"),
])
def test_knconfig_ranges(field, value, message):
    with pytest.raises(ValueError, match=message):
        KNConfig(**{field: value})


@pytest.mark.parametrize("template, slot", [("[X] was born .", r"\[Y\]"), ("born in [Y] .", r"\[X\]"), ("[X] and [X] in [Y]", r"\[X\]")])
def test_template_needs_one_x_and_one_y(template, slot):
    with pytest.raises(ValueError, match=f"Relation P19: template .* must contain {slot} exactly once"):
        data.Relation("P19", "place of birth", "N-1", (template,))


def test_templates_must_be_a_sequence_of_str():
    with pytest.raises(TypeError, match="templates must be a sequence of str"):
        data.Relation("P19", "place of birth", "N-1", "[X] was born in [Y] .")


def test_unknown_model_fails_fast_offline(monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE is set: the hub must not be asked")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "model_info", no_hub)
    started = time.perf_counter()
    with pytest.raises(models.UnknownModel, match="nope-no-such-model: unknown model: no local copy, and HF_HUB_OFFLINE is set"):
        models.load_model("nope-no-such-model")
    assert time.perf_counter() - started < 5


def test_unknown_model_asks_the_hub_once(monkeypatch):
    import huggingface_hub

    calls = []

    def unreachable(name, timeout=None, **kwargs):
        calls.append(name)
        raise ConnectionError("no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(models.UnknownModel, match=r"nope-no-such-model: unknown model \(known without a model hub: smollm2-135m"):
        models.load_model("nope-no-such-model")
    assert calls == ["nope-no-such-model"]


@pytest.mark.parametrize("stage, option, good", [("statistics", "inter_pairs", "uniform"), ("suppress-amplify", "averaging", "kn_only")])
def test_an_experiment_option_with_choices_is_checked_once_for_library_and_command(stage, option, good, capsys):
    """The choices live on the Option: the library (config from settings) and the command line (argparse) both
    refuse a value outside them, in one line, before anything runs."""
    from kn_lib.run.cli import main
    from kn_lib.run.experiment_definitions import EXPERIMENTS
    from kn_lib.run.registry import KnUsageError, settings_for

    experiment = EXPERIMENTS[stage]
    bad = settings_for("tiny-random-llama", "smoke", params={option: "sometimes"})
    with pytest.raises(KnUsageError, match=f"--{option.replace('_', '-')} must be .* got 'sometimes'"):
        experiment.config(bad)
    assert getattr(experiment.config(settings_for("tiny-random-llama", "smoke", params={option: good})), option) == good
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--model", "tiny-random-llama", "--preset", "smoke", f"--{option.replace('_', '-')}", "sometimes"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("kn: error:") and "sometimes" in err and len(err.strip().splitlines()) == 1
