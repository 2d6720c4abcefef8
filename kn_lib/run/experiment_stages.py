"""The paper's experiments as stages of the ``kn`` command: ``statistics``, ``suppress-amplify``,
``bingrel``, ``update`` and ``erase`` (``kn_lib.experiments``, sections 4.4-5.2 of Dai et al. 2022).

Each runs after ``refine`` on the same settings (model, fact sample, seed, attribution settings) and
reads its refined knowledge neurons from the results store; without them it stops with a one-line
message naming the command to run first (``kn run --preset ... --model ...`` or ``kn refine``)::

    kn run --preset smoke-experiments --model tiny-random-llama      # attribute, refine, every experiment
    kn statistics --preset smoke --model tiny-random-llama            # one experiment, after `kn run`
    kn update --preset smoke --model tiny-random-llama --lambda2 4    # an experiment's own option

Shards: an experiment needs the whole fact sample at once (pairs of facts across relations, unrelated
facts drawn from other relations, perplexity on other relations), so a shard is one *neuron set*:

* ``ig`` (or whatever ``--method`` the run uses): the knowledge neurons of ``refine``;
* ``activation``: the paper's activation baseline, for the experiments that compare with it
  (``statistics`` (Table 2), ``suppress-amplify`` (Figures 4-5), ``bingrel`` (Table 4)). It is added
  when the baseline's refined neurons exist for the same settings, which a user produces with
  ``kn run --method activation`` and otherwise the same options (``--model``, ``--preset``,
  ``--relations``, ``--facts-per-relation``, ``--seed``, ``--steps``, ``--chunk-size``: the baseline's
  results are keyed like any other). Rerunning the experiment afterwards computes only that shard.
  ``update`` compares with random neurons itself (``--random-control``), ``erase`` has no baseline.
* ``random-layer`` and ``activation-matched`` (``suppress-amplify``, ``erase``): the run's knowledge
  neurons replaced by their matched controls (``experiments.controls``), on the same facts; computed
  like any other shard, so a run committed before them gains them on its next run without recomputing
  the others. ``update`` repeats each edit on both controls inside its own shard (``--controls``).

Tables of every stage (each with the experiment's ``model``, ``method`` and ``seed`` columns; the
``method`` column tells the neuron sets apart): ``table`` (the experiment's tidy table, one row per
observation; what ``results.load`` returns by default), the experiment's other tables (``layers``,
``pairs``, ``by_relation``, ``ppl_prompts``, ``paraphrases``, ``neurons``), ``summary`` (the summary dataclass as a
one-row table; ``update``: one row per neuron set, knowledge and random) and ``skipped`` (every input
the experiment could not use, why; ``template_id`` is the template (BINGREL: sentence) index of a
prompt-level skip and NA for a fact- or relation-level one, as the runner's skip counts expect).

The settings key of an experiment's results holds the refine key (so the model, sample, seed and
attribution settings), the baseline's refine key where it compares with one, the relations of the
sample, and the experiment's config including its seed (``--experiment-seed``, default the run's
``--seed``). ``results.load(model, "statistics", "summary", preset=..., ...)`` reads them back.

The experiments themselves (options, config, how each runs on a neuron set) are in
``experiment_definitions``, what they read besides their own shards (refined neurons, the population
beyond the sample, the largest bags) in ``experiment_inputs``; this module makes them stages: key, plan,
compute, tables.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Callable

import pandas as pd

from .registry import (
    Job, MissingInputs, Preset, RunSettings, Stage, StageContext, data_checksums, register_preset, register_stage, same_facts,
)
from .search_stages import REFINE, above_threshold
from .partial import PartialShard
from .experiment_definitions import EXPERIMENTS, Experiment
from .experiment_inputs import _missing_relations, _refine_store, _run_first, _with_method, largest_bags, measured_before
from .store import cache_key

BASELINE = "activation"  # the paper's baseline attribution method


# -- stage functions -------------------------------------------------------------------------------


def _key_settings(experiment: Experiment) -> Callable[[RunSettings], dict]:
    def key(settings: RunSettings) -> dict:
        out = {
            "experiment": experiment.name,
            "refine_key": cache_key(REFINE.key_settings(settings)),
            "relations": settings.relation_ids(),  # an experiment's shard holds the whole sample
            "facts_per_relation": settings.facts_per_relation,
            "method": settings.config.method,
            "config": experiment.key_config(settings),
        }
        if experiment.compares_baseline and settings.config.method != BASELINE:
            out["baseline_refine_key"] = cache_key(REFINE.key_settings(_with_method(settings, BASELINE)))
        if experiment.needs_bags:
            from .. import sources
            from ..bingrel import BAGS_FILE

            out["bags_sha256"] = {r: sources.SHA256.get(BAGS_FILE.format(relation=r)) for r in settings.relation_ids()}
            out["data_sha256"] = data_checksums()
        return out

    return key


def _plan(experiment: Experiment) -> Callable[[StageContext], list[Job]]:
    def plan(ctx: StageContext) -> list[Job]:
        settings = ctx.settings
        experiment.config(settings)  # bad options fail here, before any model loads
        method = settings.config.method
        store = _refine_store(ctx, method)
        missing = _missing_relations(store, settings)
        if missing:
            raise MissingInputs(
                f"{experiment.name}: no refined knowledge neurons for {len(missing)} relation(s) ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}) in {store.dir}; run `{_run_first(settings, method)}` "
                f"(or `kn attribute` then `kn refine` with the same options) first"
            )
        facts = tuple(f for fs in settings.sample().values() for f in fs)
        jobs = [Job(method, "*", facts)]
        if experiment.compares_baseline and method != BASELINE:
            baseline = _refine_store(ctx, BASELINE)
            if baseline.exists() and not _missing_relations(baseline, settings):
                jobs.append(Job(BASELINE, "*", facts))
        if experiment.has_controls and method != BASELINE:
            jobs += [Job(kind, "*", facts) for kind in experiment.control_kinds]
        return jobs

    return plan


def _compute(experiment: Experiment) -> Callable[..., dict]:
    def compute(ctx: StageContext, job: Job, adapter=None, on_fact=None) -> dict[str, pd.DataFrame]:
        from ..experiments.controls import ALL_CONTROLS, kn_overlap

        control = job.shard if job.shard in ALL_CONTROLS else None  # a control shard: the run's own neurons, matched
        settings = ctx.settings if control else _with_method(ctx.settings, job.shard)
        relations = settings.relation_ids()
        refine = _refine_store(ctx, settings.config.method)
        refined = refine.read("refined", relations)
        wanted = set(job.fact_ids)
        refined = refined[refined["fact_id"].isin(wanted)].reset_index(drop=True) if len(refined) else refined
        if refined.empty:  # an empty shard table may lack the columns the experiments check
            refined = pd.DataFrame(columns=["fact_id", "relation", "layer", "neuron", "share", "p", "model", "method"])
        inputs: dict[str, Any] = {}
        if experiment.name in ("statistics", "update"):
            attribute = StageContext("attribute", settings, ctx.root).inputs("attribute")
            shards = [s for s in attribute.entries() if s.split("/")[0] in set(relations)]
            prompts = attribute.read("prompts", shards)
            searched = prompts[prompts["fact_id"].isin(wanted)] if len(prompts) else pd.DataFrame(columns=["fact_id", "relation"])
            inputs["searched"] = searched[["fact_id", "relation"]].drop_duplicates().reset_index(drop=True)
        if experiment.name == "update":
            inputs["bags"] = largest_bags(ctx, settings, relations, refined, inputs["searched"])
            inputs["partial"] = PartialShard.of(ctx.inputs(ctx.stage).dir, job.shard)
        if experiment.name == "erase":
            attribute = StageContext("attribute", settings, ctx.root).inputs("attribute")
            shards = [s for s in attribute.entries() if s.split("/")[0] in set(relations)]
            coarse = attribute.read("coarse", shards) if shards else pd.DataFrame(columns=["fact_id", "template_id", "layer", "neuron", "score"])
            inputs["coarse"] = above_threshold(coarse[coarse["fact_id"].isin(wanted)], settings.config.coarse_threshold)
            store = ctx.inputs(ctx.stage)
            inputs["partial"] = PartialShard.of(store.dir, job.shard)
            if control:  # the unedited prompts' answers, as the knowledge neurons' shard measured them (read
                # again when a relation needs more: that shard may be running beside this one, saving relations)
                inputs["before"] = lambda: measured_before(store, ctx.settings.config.method)
        if experiment.needs_bags:
            from ..bingrel import load_bags

            inputs["bags"] = load_bags(relations)
        overlap = None
        if control:
            inputs["control"] = control
            knowledge = refined
            refined = experiment.control(control, adapter, refined, list(job.facts), settings, inputs)
            if experiment.name != "erase":  # erase matches relations' top neurons, avoiding all their KNs itself
                overlap = kn_overlap(refined, knowledge)
        progress = job_progress(job, on_fact)
        inputs["progress"] = progress
        result = experiment.run(adapter, refined, list(job.facts), settings, inputs)
        tables = {name: _parquet_ready(frame) for name, frame in experiment.frames(result).items()}
        tables["summary"] = _summary_frame(experiment.summaries(result), settings, job.shard)
        if overlap is not None:  # how many control neurons are knowledge neurons of the sample (any, same relation)
            tables["summary"] = tables["summary"].assign(**{f"control_kn_{k}": v for k, v in overlap.items()})
        tables["skipped"] = _skipped_frame(result.skipped, settings, job.shard)
        progress(len(job.facts))  # whatever the experiment did not report (skipped facts, a shard without facts)
        if "partial" in inputs:
            inputs["partial"].clear()  # the whole shard is in ``tables`` now
        return tables

    return compute


def job_progress(job: Job, on_fact: Callable[[int], object] | None) -> Callable[[int], None]:
    """The ``progress`` callback of work done inside one shard: passes units finished on to the runner's
    ``on_fact``, never more than the job's facts in all, so that ``progress(len(job.facts))`` at the end
    reports exactly what is left."""
    reported = [0]

    def progress(n: int) -> None:
        n = min(n, len(job.facts) - reported[0])
        if on_fact is not None and n > 0:
            reported[0] += n
            on_fact(n)

    return progress


def _summary_frame(summaries: list, settings: RunSettings, shard: str) -> pd.DataFrame:
    rows = []
    for summary in summaries:
        row = {}
        for key, value in asdict(summary).items():
            if isinstance(value, dict):  # BingRel's n_sentences: one column per type
                row |= {f"{key}_{k}": v for k, v in value.items()}
            else:
                row[key] = value
        if row.get("method") == "?":  # no knowledge neuron at all: the table does not say
            row["method"] = shard  # the run's method, or a control's name
        if row.get("model") == "?":
            row["model"] = settings.model
        rows.append(row)
    return pd.DataFrame(rows)


def _skipped_frame(skipped: pd.DataFrame, settings: RunSettings, shard: str) -> pd.DataFrame:
    frame = skipped.copy()

    def index(item) -> Any:
        if item is None or (isinstance(item, float) and pd.isna(item)):
            return pd.NA
        found = re.search(r"(\d+)\s*$", str(item))
        return int(found.group(1)) if found else pd.NA

    frame["template_id"] = pd.array([index(i) for i in frame["item"]], dtype="Int64")
    for column in ("experiment", "relation", "fact_id", "item", "reason"):
        frame[column] = frame[column].astype("object")
    frame["model"], frame["method"] = settings.model, shard  # the run's method, or a control's name
    return frame


def _parquet_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns Parquet can hold with one type: lists of neurons stay lists, anything else mixed -> str."""
    frame = frame.reset_index(drop=True)
    for column in frame.columns:
        if frame[column].dtype == object and len(frame):
            kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and pd.isna(v))}
            if len(kinds) > 1:
                frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    return frame


def _stage(experiment: Experiment) -> Stage:
    return register_stage(Stage(
        name=experiment.name, help=experiment.help, tables=(*experiment.tables, "summary", "skipped"),
        key_settings=_key_settings(experiment), plan=_plan(experiment), compute=_compute(experiment),
        needs_model=True, depends=("refine",), options=experiment.options,
        covers=same_facts,  # the key fixes the config; a known-facts sample can change with its screen
    ))


STAGES = {name: _stage(e) for name, e in EXPERIMENTS.items()}
EXPERIMENT_STAGES = tuple(STAGES)

register_preset(Preset(
    "smoke-experiments", "2 relations x 2 facts: checks that attribute, refine and every experiment run", ("P30", "P36"), 2,
    stages=("attribute", "refine", *EXPERIMENT_STAGES),
))

__all__ = ["BASELINE", "EXPERIMENTS", "EXPERIMENT_STAGES", "STAGES"]
