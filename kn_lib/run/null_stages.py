"""The field's nulls against knowledge neurons as ``kn`` stages (the "Which neurons matter?" chapter), one
shard per relation, both needing ``refine``:

* ``nonsense`` (KLoB): the pipeline rerun on random-word prompts of the same length, the fact's answer kept
  (``experiments.nonsense_prompts``); the first ``--null-facts`` facts of each relation with at least 3
  usable prompts::

      kn nonsense --preset known-facts --model smollm2-135m --null-facts 5

* ``redundancy``: common neurons (in more than ``--max-share`` of the sample's facts) and degenerate sets
  (Chen et al.), for the knowledge neurons and their two matched controls (``experiments.redundancy``);
  and suppress/amplify with the common neurons filtered out, again beside the controls::

      kn redundancy --preset known-facts --model smollm2-135m
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from .experiment_definitions import SEED_OPTION, _experiment_seed
from .experiment_inputs import _missing_relations, _refine_store, _run_first
from .experiment_stages import _parquet_ready, _skipped_frame, job_progress
from .registry import Job, KnUsageError, MissingInputs, Option, RunSettings, Stage, StageContext, common_key_settings, register_stage
from .store import cache_key

DEFAULT_NULL_FACTS = 5


def _refine_key(settings: RunSettings) -> str:
    from .search_stages import REFINE

    return cache_key(REFINE.key_settings(settings))


def _int(settings: RunSettings, name: str, default: int, low: int = 1) -> int:
    value = settings.param(name)
    value = default if value is None else int(value)
    if value < low:
        raise KnUsageError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    return value


def _max_share(settings: RunSettings) -> float:
    value = settings.param("max_share")
    value = 0.05 if value is None else float(value)
    if not 0 < value < 1:
        raise KnUsageError(f"--max-share must lie in (0, 1), got {value}")
    return value


def _plan_per_relation(stage: str, n: int | None = None):
    def plan(ctx: StageContext) -> list[Job]:
        settings = ctx.settings
        store = _refine_store(ctx, settings.config.method)
        missing = _missing_relations(store, settings)
        if missing:
            raise MissingInputs(f"{stage}: no refined knowledge neurons for {len(missing)} relation(s) ({', '.join(missing[:3])}"
                                f"{', ...' if len(missing) > 3 else ''}) in {store.dir}; run `{_run_first(settings, settings.config.method)}` first")
        return [Job(r, r, tuple(facts)) for r, facts in settings.sample().items() if facts]

    return plan


# -- nonsense ---------------------------------------------------------------------------------------------

def _nonsense_config(settings: RunSettings):
    from ..experiments.nonsense_prompts import NonsenseConfig

    c = settings.config
    return NonsenseConfig(ig=c.ig, threshold=c.coarse_threshold, share_rule=c.share_rule, min_count=c.min_count, seed=_experiment_seed(settings))


def _nonsense_key(settings: RunSettings) -> dict:
    config = asdict(_nonsense_config(settings))
    config["ig"]["batch_rows"] = None  # scores do not depend on it
    return {**common_key_settings(settings), "experiment": "nonsense", "refine_key": _refine_key(settings), "relations": settings.relation_ids(),
            "facts_per_relation": settings.facts_per_relation, "null_facts": _int(settings, "null_facts", DEFAULT_NULL_FACTS), "config": config}


def _nonsense_compute(ctx: StageContext, job: Job, adapter, on_fact=None) -> dict[str, pd.DataFrame]:
    from ..experiments.evaluation import FactPrompts, SkipLog
    from ..experiments.neuron_sets import neurons_by_fact
    from ..experiments.nonsense_prompts import nonsense_null

    settings = ctx.settings
    refine = _refine_store(ctx, settings.config.method)
    refined, thresholds = refine.read("refined", [job.relation]), refine.read("thresholds", [job.relation])
    skips = SkipLog("nonsense")
    prompts = FactPrompts(adapter, job.facts, settings.load_relations(), skips)
    chosen: dict[str, list] = {}
    for fact in job.facts:
        usable = prompts.of(fact["fact_id"])
        if len(usable) < settings.config.min_count:
            skips.add(f"fewer than {settings.config.min_count} usable prompts: no refined set under the official rule", job.relation, fact["fact_id"])
        elif len(chosen) < _int(settings, "null_facts", DEFAULT_NULL_FACTS):
            chosen[fact["fact_id"]] = usable
    progress = job_progress(job, on_fact)
    table = nonsense_null(adapter, chosen, {f["fact_id"]: f for f in job.facts}, neurons_by_fact(refined) if len(refined) else {},
                          dict(zip(thresholds["relation"], thresholds["p"])), _nonsense_config(settings), progress=progress)
    progress(len(job.facts))
    return {"table": _parquet_ready(table.assign(model=settings.model) if len(table) else table),
            "skipped": _skipped_frame(skips.frame(), settings, settings.config.method)}


NONSENSE = register_stage(Stage(
    name="nonsense", help="the pipeline on random-word prompts of the same length, the answer kept: how many 'knowledge neurons' "
                          "does gibberish get? (KLoB's null; needs refine)",
    tables=("table", "skipped"), key_settings=_nonsense_key, plan=_plan_per_relation("nonsense"), compute=_nonsense_compute,
    needs_model=True, depends=("refine",),
    options=(Option("null_facts", int, None, f"facts per relation with at least 3 usable prompts (default {DEFAULT_NULL_FACTS})"), SEED_OPTION),
))


# -- redundancy: common and degenerate neurons -----------------------------------------------------------------

def _redundancy_key(settings: RunSettings) -> dict:
    return {**common_key_settings(settings), "experiment": "redundancy", "refine_key": _refine_key(settings), "relations": settings.relation_ids(),
            "facts_per_relation": settings.facts_per_relation, "max_share": _max_share(settings), "experiment_seed": _experiment_seed(settings)}


def _redundancy_compute(ctx: StageContext, job: Job, adapter, on_fact=None) -> dict[str, pd.DataFrame]:
    from ..experiments.controls import CONTROLS, control_table
    from ..experiments.evaluation import FactPrompts, SkipLog, seeded_rng
    from ..experiments.neuron_sets import neurons_by_fact
    from ..experiments.redundancy import common_neurons, degenerate_test, without_common
    from ..experiments.suppress_amplify import ManipulationConfig, suppress_and_amplify

    settings, seed = ctx.settings, _experiment_seed(ctx.settings)
    refine = _refine_store(ctx, settings.config.method)
    everything = refine.read("refined", [r for r in settings.relation_ids() if r in refine.entries()])
    refined = everything[everything["relation"] == job.relation].reset_index(drop=True)
    relations, facts = settings.load_relations(), list(job.facts)
    skips = SkipLog("redundancy")
    common = common_neurons(everything, _max_share(settings)) if len(everything) else set()
    filtered = without_common(refined, common) if len(refined) else refined
    sets = {"knowledge": refined}
    for kind in CONTROLS:
        sets[kind] = control_table(kind, adapter, refined, facts, relations, seed) if len(refined) else refined
    dkn, manipulated = [], []
    prompts = FactPrompts(adapter, facts, relations, skips)
    for name, table in sets.items():
        for fact_id, neurons in (neurons_by_fact(table) if len(table) else {}).items():
            if len(neurons) < 2:
                continue
            rows = degenerate_test(adapter, prompts.of(fact_id), neurons, seeded_rng(seed, f"{fact_id}/halves"))
            dkn += [{**r, "neuron_set": name} for r in rows]
    config = ManipulationConfig(seed=seed, unrelated=False)
    for name in sets:
        table = filtered if name == "knowledge" else (control_table(name, adapter, filtered, facts, relations, seed) if len(filtered) else filtered)
        if len(table):
            manipulated.append(suppress_and_amplify(adapter, table, facts, relations, config).table.assign(neuron_set=name))
    job_progress(job, on_fact)(len(job.facts))
    common_rows = pd.DataFrame(sorted(common), columns=["layer", "neuron"]).assign(relation=job.relation)
    return {"degenerate": _parquet_ready(pd.DataFrame(dkn).assign(model=settings.model) if dkn else pd.DataFrame()),
            "filtered": _parquet_ready(pd.concat(manipulated, ignore_index=True).assign(model=settings.model) if manipulated else pd.DataFrame()),
            "common": common_rows, "skipped": _skipped_frame(skips.frame(), settings, settings.config.method)}


REDUNDANCY = register_stage(Stage(
    name="redundancy", help="common neurons (in more than 5 percent of the facts) and degenerate sets (Chen et al.) of knowledge neurons and their "
                            "controls; suppress/amplify without the common ones (needs refine)",
    tables=("degenerate", "filtered", "common", "skipped"), key_settings=_redundancy_key, plan=_plan_per_relation("redundancy"),
    compute=_redundancy_compute, needs_model=True, depends=("refine",),
    options=(Option("max_share", float, None, "a neuron is common when found in more than this share of the sample's facts (default 0.05)"),
             SEED_OPTION),
))

__all__ = ["NONSENSE", "REDUNDANCY"]
