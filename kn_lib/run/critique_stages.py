"""The field's three critiques of knowledge neurons as stages of the ``kn`` command (the book's
"Is it knowledge?" chapter): ``edit-localization``, ``grammar`` and ``symmetry``.

* ``edit-localization`` (Hase et al. 2023): for each known fact, its top neurons by integrated gradients
  are edited *at every layer* with the paper's value-slot update; does attribution's layer predict where
  the edit works (``experiments.edit_localization``)? Needs ``refine`` (k = the fact's refined count)::

      kn edit-localization --preset known-facts --model smollm2-135m

* ``symmetry`` (Niu et al. 2024): after a knowledge-neuron edit of (X, r, Y) to Y', does the reverse
  (Y', r^-1, X) hold? Symmetric P47, P530, P190 and the inverse pair P36 / P1376
  (``experiments.symmetric_edits``); other relations of the sample are skipped. Needs ``refine``::

      kn symmetry --preset known-facts --model smollm2-135m --facts-per-relation 48

* ``grammar`` (Niu et al. 2024): knowledge neurons for BLiMP agreement minimal pairs, found by the
  unchanged pipeline and suppressed beside matched controls (``experiments.grammar_neurons``). One shard
  per paradigm; it needs no fact sample (``--preset``, ``--relations`` and ``--facts-per-relation`` do not
  change it)::

      kn grammar --model smollm2-135m --paradigms determiner-noun

``edit-localization`` and ``symmetry`` are experiments like ``update`` (one shard over the sample, keyed
by the refine key; tables ``table`` and ``facts`` / ``prompts``, ``summary``, ``skipped``); both repeat
each edit on controls inside their shard, so they have no control shards.
"""

from __future__ import annotations

import pandas as pd

from .experiment_definitions import EXPERIMENTS, SEED_OPTION, Experiment, _experiment_seed, _option
from .experiment_inputs import _relations_of_all, all_facts
from .experiment_stages import _parquet_ready, _skipped_frame, _stage, _summary_frame, job_progress
from .registry import Job, KnUsageError, Option, RunSettings, Stage, StageContext, common_key_settings, register_stage


class EditLocalization(Experiment):
    name = "edit-localization"
    help = "edit each known fact's top neurons at every layer: does attribution's layer predict where edits work? (Hase et al. 2023; needs refine)"
    tables = ("table", "facts")
    options = (Option("lambda2", float, None, "weight added of the new answer's embedding (default 8, the paper's)"),
               Option("layer_controls", str, None, "also edit as many random neurons of each layer: yes (default) or no",
                      choices=("yes", "no")),
               SEED_OPTION)

    def config(self, settings):
        from ..experiments.edit_localization import EditLocalizationConfig

        given = {}
        if settings.param("lambda2") is not None:
            given["lambda2"] = float(settings.param("lambda2"))
        if _option(self, "layer_controls").check(settings) is not None:
            given["controls"] = settings.param("layer_controls") == "yes"
        return EditLocalizationConfig(ig=settings.config.ig, seed=_experiment_seed(settings), **given)

    def run(self, adapter, refined, facts, settings, inputs):
        from ..experiments.edit_localization import edit_localization

        return edit_localization(adapter, refined, facts, _relations_of_all(), self.config(settings), population=all_facts(),
                                 progress=inputs.get("progress"))


class Symmetry(Experiment):
    name = "symmetry"
    help = "edit facts of symmetric (P47, P530, P190) and inverse (P36/P1376) relations: does the reverse follow? (Niu et al. 2024; needs refine)"
    tables = ("table", "prompts")
    options = (Option("sign_aware", str, None, "flip the edit of neurons with negative activation: no (default, the "
                                               "paper's edit) or yes (ours, as `kn update --sign-aware`)", choices=("yes", "no")),
               SEED_OPTION)
    legacy = {"sign_aware": False}

    def config(self, settings):
        from ..experiments.symmetric_edits import SymmetryConfig

        sign_aware = _option(self, "sign_aware").check(settings) == "yes"
        return SymmetryConfig(seed=_experiment_seed(settings), sign_aware=sign_aware)

    def run(self, adapter, refined, facts, settings, inputs):
        from ..experiments.symmetric_edits import REVERSE, symmetric_edits

        facts = [f for f in facts if f["relation"] in REVERSE]  # the others have no reverse to test
        return symmetric_edits(adapter, refined, facts, _relations_of_all(), self.config(settings), population=all_facts(),
                               progress=inputs.get("progress"))


CRITIQUE_EXPERIMENTS = {e.name: e for e in (EditLocalization(), Symmetry())}
EXPERIMENTS.update(CRITIQUE_EXPERIMENTS)
STAGES = {name: _stage(e) for name, e in CRITIQUE_EXPERIMENTS.items()}


# -- grammar: BLiMP agreement ------------------------------------------------------------------------

PARADIGM_SETS = ("determiner-noun", "subject-verb", "all")


def _paradigms(settings: RunSettings) -> tuple[str, ...]:
    """``--paradigms``: a set name (determiner-noun, the default; subject-verb; all) or paradigm names."""
    from ..blimp import DETERMINER_NOUN, PARADIGMS, SUBJECT_VERB

    given = settings.param("paradigms") or "determiner-noun"
    named = {"determiner-noun": tuple(DETERMINER_NOUN), "subject-verb": tuple(SUBJECT_VERB), "all": tuple(PARADIGMS)}
    if given in named:
        return named[given]
    names = tuple(p.strip() for p in str(given).split(",") if p.strip())
    unknown = [p for p in names if p not in PARADIGMS]
    if unknown or not names:
        raise KnUsageError(f"unknown paradigm(s) {', '.join(unknown) if unknown else repr(given)}; use {', '.join(PARADIGM_SETS)} or names of "
                           f"{', '.join(PARADIGMS)}")
    return names


def _grammar_config(settings: RunSettings):
    from ..experiments.grammar_neurons import GrammarConfig

    given = {k: int(settings.param(k)) for k in ("prompts_per_group", "eval_pairs") if settings.param(k) is not None}
    try:
        return GrammarConfig(kn=settings.config, seed=_experiment_seed(settings), **given)
    except ValueError as err:  # a bad count: one line, as for any other option
        raise KnUsageError(f"grammar: {err}") from None


def _grammar_key(settings: RunSettings) -> dict:
    from dataclasses import asdict

    from .. import sources
    from .registry import KEY_BATCH_ROWS

    config = asdict(_grammar_config(settings))
    config["kn"]["ig"]["batch_rows"] = KEY_BATCH_ROWS  # scores do not depend on it (as ``ig_settings``)
    paradigms = _paradigms(settings)
    key = common_key_settings(settings)
    key.pop("data_sha256")  # not PARAREL's: BLiMP's files
    return {**key, "experiment": "grammar", "paradigms": list(paradigms), "config": config,
            "blimp_sha256": {p: sources.SHA256.get(f"blimp/data/{p}.jsonl") for p in paradigms}}


def _grammar_plan(ctx: StageContext) -> list[Job]:
    from ..blimp import load_paradigm

    _grammar_config(ctx.settings)  # bad options fail before any model loads
    jobs = []
    for paradigm in _paradigms(ctx.settings):
        groups = sorted({pair.group for pair in load_paradigm(paradigm)})
        jobs.append(Job(paradigm, paradigm, tuple({"fact_id": f"{paradigm}/{g}", "relation": paradigm} for g in groups)))
    return jobs


def _grammar_compute(ctx: StageContext, job: Job, adapter, on_fact=None) -> dict[str, pd.DataFrame]:
    from ..blimp import load_paradigm
    from ..experiments.grammar_neurons import grammar_neurons

    progress = job_progress(job, on_fact)  # groups finished
    result = grammar_neurons(adapter, load_paradigm(job.relation), _grammar_config(ctx.settings), progress=progress)
    progress(len(job.facts))  # groups without usable pairs report nothing themselves
    tables = {name: _parquet_ready(getattr(result, name)) for name in GRAMMAR_TABLES[:-2]}
    tables["summary"] = _summary_frame([result.summary], ctx.settings, "knowledge")
    tables["skipped"] = _skipped_frame(result.skipped, ctx.settings, ctx.settings.config.method)
    return tables


GRAMMAR_TABLES = ("table", "refined", "coarse", "groups", "thresholds", "summary", "skipped")
GRAMMAR = register_stage(Stage(
    name="grammar", help="knowledge neurons for BLiMP agreement minimal pairs, suppressed beside matched controls (Niu et al. 2024)",
    tables=GRAMMAR_TABLES, key_settings=_grammar_key, plan=_grammar_plan, compute=_grammar_compute, needs_model=True,
    options=(Option("paradigms", str, None, "determiner-noun (default), subject-verb, all, or comma-separated BLiMP paradigm names"),
             Option("prompts_per_group", int, None, "minimal pairs attributed per group, the group's 'paraphrases' (default 20)"),
             Option("eval_pairs", int, None, "held-out minimal pairs per group on which neurons are suppressed (default 50)"),
             SEED_OPTION),
    covers=lambda entry, job: True,  # the key fixes the paradigm's pairs
    uses_sample=False,  # BLiMP, not the run's fact sample: --preset and --relations do not select its rows
))

CRITIQUE_STAGES = (*STAGES, GRAMMAR.name)

__all__ = ["CRITIQUE_EXPERIMENTS", "CRITIQUE_STAGES", "GRAMMAR", "STAGES"]
