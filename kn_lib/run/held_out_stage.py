"""``kn held-out``: suppress/amplify knowledge neurons chosen on half of each fact's prompts, measured on
both halves (``experiments.held_out``), beside the two non-KN matched controls; one shard per relation,
needing ``attribute`` and ``refine``::

    kn held-out --preset known-facts --model smollm2-135m --facts-per-relation 30

Each shard refines every relation of the sample on its selection halves (cheap: no model) so that the
controls avoid every knowledge neuron of the sample, the half-refined ones and the committed ones alike.
Tables: ``table`` (one row per prompt, operation and neuron set, with its ``half``), ``refined`` (the
selection half's knowledge neurons and their controls, by ``neuron_set``), ``thresholds`` (the selection
half's p, per relation), ``skipped``.
"""

from __future__ import annotations

import pandas as pd

from .experiment_definitions import SEED_OPTION, _experiment_seed
from .experiment_inputs import _refine_store
from .experiment_stages import _parquet_ready, _skipped_frame, job_progress
from .null_stages import _plan_per_relation, _refine_key
from .registry import Job, RunSettings, Stage, StageContext, common_key_settings, register_stage


def _key(settings: RunSettings) -> dict:
    return {**common_key_settings(settings), "experiment": "held-out", "refine_key": _refine_key(settings),
            "relations": settings.relation_ids(), "facts_per_relation": settings.facts_per_relation,
            "experiment_seed": _experiment_seed(settings)}


def selection_refined(ctx: StageContext) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Every relation of the sample refined on its facts' selection halves: (refined, thresholds, split)."""
    from ..experiments.held_out import selection_sets, splits
    from .search_stages import above_threshold, refine_tables

    settings = ctx.settings
    attribute = StageContext("attribute", settings, ctx.root).inputs("attribute")
    relations = set(settings.relation_ids())
    shards = [s for s in attribute.entries() if s.split("/")[0] in relations]
    sample = {f["fact_id"] for fs in settings.sample().values() for f in fs}
    prompts, coarse = attribute.read("prompts", shards), attribute.read("coarse", shards)
    prompts, coarse = prompts[prompts["fact_id"].isin(sample)], coarse[coarse["fact_id"].isin(sample)]
    coarse = above_threshold(coarse, settings.config.coarse_threshold)
    split = splits(prompts, _experiment_seed(settings))
    by_prompt: dict[str, dict[int, set]] = {f: {} for f in prompts["fact_id"].unique()}
    for f, t, layer, neuron in zip(coarse["fact_id"], coarse["template_id"], coarse["layer"], coarse["neuron"]):
        by_prompt[f].setdefault(int(t), set()).add((int(layer), int(neuron)))
    tag = {"model": settings.model, "method": settings.config.method}
    refined, thresholds = [], []
    for relation, facts in settings.sample().items():
        ids = [f["fact_id"] for f in facts if f["fact_id"] in by_prompt]
        tables = refine_tables(relation, selection_sets({f: by_prompt[f] for f in ids}, split), settings.config, tag)
        refined.append(tables["refined"])
        thresholds.append(tables["thresholds"])
    return pd.concat(refined, ignore_index=True), pd.concat(thresholds, ignore_index=True), split


def every_knowledge_neuron(refined: pd.DataFrame, committed: pd.DataFrame) -> set[tuple[int, int]]:
    """The (layer, neuron) pairs no non-KN control may use: the half-refined knowledge neurons of the sample
    (``refined``) and the committed ones (``committed``) alike."""
    return {(int(layer), int(neuron)) for frame in (refined, committed) for layer, neuron in zip(frame["layer"], frame["neuron"])}


def _compute(ctx: StageContext, job: Job, adapter, on_fact=None) -> dict[str, pd.DataFrame]:
    from ..experiments.controls import NON_KN_CONTROLS, control_table
    from ..experiments.evaluation import SkipLog
    from ..experiments.held_out import tag_halves
    from ..experiments.suppress_amplify import ManipulationConfig, suppress_and_amplify

    settings, seed = ctx.settings, _experiment_seed(ctx.settings)
    refined, thresholds, split = selection_refined(ctx)
    committed = _refine_store(ctx, settings.config.method).read("refined", settings.relation_ids())
    avoid = every_knowledge_neuron(refined, committed)
    own = refined[refined["relation"] == job.relation].reset_index(drop=True)
    facts, relations = list(job.facts), settings.load_relations()
    sets = {"knowledge": own}
    for kind in NON_KN_CONTROLS:
        sets[kind] = control_table(kind, adapter, own, facts, relations, seed, avoid) if len(own) else own
    config = ManipulationConfig(seed=seed, unrelated=False)
    frames, skipped = [], pd.DataFrame()
    for name, table in sets.items():
        if table.empty:  # no knowledge neuron in the relation: every fact at zero change, as the official mean counts it
            table = pd.DataFrame(columns=["fact_id", "relation", "layer", "neuron", "share", "p", "model", "method"])
        result = suppress_and_amplify(adapter, table, facts, relations, config)
        frames.append(tag_halves(result.table, split).assign(neuron_set=name))
        if name == "knowledge":
            skipped = result.skipped
    job_progress(job, on_fact)(len(facts))
    out = pd.concat(frames, ignore_index=True).assign(model=settings.model)
    neurons = pd.concat([t.assign(neuron_set=name) for name, t in sets.items() if len(t)], ignore_index=True) if len(own) else \
        own.assign(neuron_set=pd.Series(dtype=str))
    return {"table": _parquet_ready(out), "refined": _parquet_ready(neurons.assign(model=settings.model)),
            "thresholds": _parquet_ready(thresholds[thresholds["relation"] == job.relation].reset_index(drop=True)),
            "skipped": _skipped_frame(skipped if len(skipped) else SkipLog("held_out").frame(), settings, settings.config.method)}


HELD_OUT = register_stage(Stage(
    name="held-out", help="suppress/amplify knowledge neurons chosen on half of each fact's prompts, on both halves, beside the "
                          "non-KN controls: is the effect selection? (needs attribute and refine)",
    tables=("table", "refined", "thresholds", "skipped"), key_settings=_key, plan=_plan_per_relation("held-out"),
    compute=_compute, needs_model=True, depends=("refine",), options=(SEED_OPTION,),
))

__all__ = ["HELD_OUT"]
