"""The `kn` command: a whole preset on a tiny model, `info`, and one-line errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MIRROR, run_kn as kn
from kn_lib.run import results

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_run_preset_then_load(tmp_path, capsys):
    args = ["--model", "tiny-random-bert", "--preset", "smoke", "--steps", "2", "--out", str(tmp_path), "--no-progress"]
    code, out, err = kn(capsys, "run", *args)
    assert code == 0, err
    header, *lines = out.strip().splitlines()
    assert header.startswith("kn run: model tiny-random-bert, preset smoke, 2 relations x 2 facts (seed 0)")
    assert [line.split()[0] for line in lines] == ["attribute", "refine"]
    assert "4 facts in 2 shards (2 computed, 0 reused)" in lines[0] and "s/fact" in lines[0]
    refined = results.load("tiny-random-bert", "refine", preset="smoke", steps=2, root=tmp_path)
    assert set(refined["relation"]) <= {"P30", "P36"} and len(refined) > 0
    code, out, _ = kn(capsys, "refine", *args)  # a stage alone; finished, so nothing recomputed
    assert code == 0 and "(0 computed, 2 reused)" in out


def test_info_lists_data_presets_stages_models_results(tmp_path, capsys):
    code, out, _ = kn(capsys, "info", "--out", str(tmp_path))
    assert code == 0
    assert "34 relations, 27,738 facts, 253,448 prompts" in out
    for word in ("smoke", "book-sample", "attribute", "refine", "tiny-random-llama", "smollm2-135m", "(none)"):
        assert word in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attribute", "--relations", "P19,P999"], "unknown relation P999"),
        (["run", "--model", "no-such-model-xyz"], "no-such-model-xyz: unknown model"),
        (["attribute", "--out", "{file}/results"], "output directory is not writable"),
        (["refine", "--model", "tiny-random-llama", "--seed", "12345"], "attribution not finished"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(tmp_path, capsys, argv, message):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = [a.replace("{file}", str(blocker)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, out, err = kn(capsys, *argv, "--no-progress")
    assert code == 2
    assert err.startswith("kn: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_option_value_is_an_argparse_error(capsys):
    code, _, err = kn(capsys, "attribute", "--facts-per-relation", "0")
    assert code == 2 and "expected a positive integer" in err


def test_console_script_exit_status_without_traceback(tmp_path):
    """The real process: exit status 2 and a single stderr line (no traceback)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kn_lib.run.cli", "attribute", "--relations", "P0", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "KN_DATA_MIRROR": os.environ["KN_DATA_MIRROR"]},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "unknown relation P0" in proc.stderr


def test_known_facts_preset_runs_every_stage_on_facts_from_the_screen(tmp_path, capsys):
    """`kn screen` then `kn run --preset known-facts`: the whole chain on facts the (tiny) model answers;
    without the screen, one line saying which command to run first."""
    args = ["--model", "tiny-random-llama", "--relations", "P30,P140", "--out", str(tmp_path), "--no-progress"]
    run = ["run", "--preset", "known-facts", "--known", "any", "--facts-per-relation", "2", "--steps", "2", *args]
    code, _, err = kn(capsys, *run)
    assert code == 2 and "kn screen --preset paper" in err and len(err.strip().splitlines()) == 1
    code, out, err = kn(capsys, "screen", "--preset", "paper", *args)
    assert code == 0, err
    code, out, err = kn(capsys, *run)
    assert code == 0, err
    header, *lines = out.strip().splitlines()
    assert "facts (at most) that the model knows (some prompt answered top-1)" in header
    assert [line.split()[0] for line in lines] == ["attribute", "refine", "statistics", "suppress-amplify", "update", "erase"]
    screen = results.load("tiny-random-llama", "screen", root=tmp_path)
    known = set(screen.loc[screen["single_token"] & screen["any_correct"], "fact_id"])
    prompts = results.load("tiny-random-llama", "attribute", "prompts", preset="known-facts", known="any", relations="P30,P140",
                           facts_per_relation=2, steps=2, root=tmp_path)
    assert set(prompts["fact_id"]) and set(prompts["fact_id"]) <= known
    from kn_lib.run.experiment_definitions import EXPERIMENTS
    from kn_lib.run.registry import settings_for

    settings = settings_for("tiny-random-llama", "known-facts", known="any", relations="P30,P140", facts_per_relation=2,
                            steps=2, root=tmp_path)
    assert EXPERIMENTS["update"].config(settings).facts_per_relation == 30  # the preset's edits per relation
    full = [r for r, facts in settings.sample().items() if len(facts) == 2]
    assert EXPERIMENTS["erase"].config(settings).relations == tuple(full)  # relations whose known facts fill the sample


def test_known_sample_with_a_relation_the_model_does_not_know(tmp_path, capsys, monkeypatch):
    """A relation without any known fact: no attribution shard, an empty refined table, and the experiments
    run on the other relation's facts only; the stores hold exactly the sampled facts (read unfiltered)."""
    from kn_lib.run import registry
    from kn_lib.run.registry import settings_for
    from kn_lib.run.result_store import ResultStore
    from kn_lib.run.store import cache_key

    args = ["--model", "tiny-random-llama", "--relations", "P30,P140", "--out", str(tmp_path), "--no-progress"]
    assert kn(capsys, "screen", "--preset", "paper", *args)[0] == 0
    screen = results.load("tiny-random-llama", "screen", root=tmp_path)
    only_p30 = frozenset(screen.loc[(screen["relation"] == "P30") & screen["single_token"], "fact_id"])
    monkeypatch.setattr(registry, "_known_in_store", lambda *a: only_p30)  # the model "knows" P30 only
    code, out, err = kn(capsys, "run", "--preset", "known-facts", "--facts-per-relation", "2", "--steps", "2", *args)
    assert code == 0, err
    settings = settings_for("tiny-random-llama", "known-facts", relations="P30,P140", facts_per_relation=2, steps=2, root=tmp_path)
    sampled = set(settings.selected_fact_ids())
    assert len(sampled) == 2 and all(f.startswith("P30/") for f in sampled)
    stages = registry.stage_registry()
    attribute = ResultStore(tmp_path, "tiny-random-llama", "attribute", cache_key(stages["attribute"].key_settings(settings)))
    assert set(attribute.read("prompts")["fact_id"]) == sampled  # unfiltered: nothing outside the sample computed
    refine = ResultStore(tmp_path, "tiny-random-llama", "refine", cache_key(stages["refine"].key_settings(settings)))
    assert set(refine.entries()) == {"P30", "P140"} and refine.read("refined", ["P140"]).empty
    table = results.load("tiny-random-llama", "suppress-amplify", "table", preset="known-facts", relations="P30,P140",
                         facts_per_relation=2, steps=2, root=tmp_path)
    assert set(table["fact_id"]) <= sampled
