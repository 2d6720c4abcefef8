"""``kn held-out-update``: Table 6's edit with knowledge neurons chosen on half of each fact's prompts,
judged on a prompt of that half and read on every other prompt, each tagged with its half; one shard per
relation, needing ``attribute`` and ``refine``::

    kn held-out-update --preset known-facts --model smollm2-135m --facts-per-relation 30

The edit is the official one (``experiments.update_facts``: official selection and sampling, the paper's
lambdas), on the neurons that ``held_out_stage.selection_refined`` refines on the selection halves, with
the two non-KN controls kept off every knowledge neuron of the sample (half-refined and committed). The
edited prompt is drawn from the fact's selection half, so its paraphrases split into in-sample prompts
(the rest of that half) and held-out prompts (the other half): the same edit, read where the neurons were
chosen and where they were not. The official ``select_kn`` counts over the bags ``update`` counts over
(``largest_bags``: the relation's largest refined population), the sample's own bags replaced by their
selection halves'. Tables: ``table`` (one row per edit and neuron set),
``paraphrases`` (one row per edit, neuron set and other prompt of the fact, with its ``half``),
``skipped``.
"""

from __future__ import annotations

import pandas as pd

from .experiment_definitions import SEED_OPTION, _experiment_seed
from .experiment_inputs import _refine_store, _relations_of_all, all_facts, largest_bags
from .experiment_stages import _parquet_ready, _skipped_frame, job_progress
from .held_out_stage import every_knowledge_neuron, selection_refined
from .null_stages import _plan_per_relation, _refine_key
from .registry import Job, Option, RunSettings, Stage, StageContext, common_key_settings, register_stage


def _key(settings: RunSettings) -> dict:
    return {**common_key_settings(settings), "experiment": "held-out-update", "refine_key": _refine_key(settings),
            "relations": settings.relation_ids(), "facts_per_relation": settings.facts_per_relation,
            "edits_per_relation": _edits(settings), "experiment_seed": _experiment_seed(settings)}


def _edits(settings: RunSettings) -> int:
    from ..experiments import UpdateConfig

    given = settings.param("edits_per_relation")
    return UpdateConfig().facts_per_relation if given is None else int(given)  # default: Table 6's


def _compute(ctx: StageContext, job: Job, adapter, on_fact=None) -> dict[str, pd.DataFrame]:
    from ..experiments import UpdateConfig, update_facts
    from ..experiments.controls import NON_KN_CONTROLS
    from ..experiments.held_out import tag_halves

    settings = ctx.settings
    refined, _, split = selection_refined(ctx)
    committed = _refine_store(ctx, settings.config.method).read("refined", settings.relation_ids())
    avoid = every_knowledge_neuron(refined, committed)
    facts = list(job.facts)
    own = refined[refined["relation"] == job.relation].reset_index(drop=True)
    searched = pd.DataFrame({"fact_id": [f["fact_id"] for f in facts if f["fact_id"] in split], "relation": job.relation})
    bags = largest_bags(ctx, settings, [job.relation], committed[committed["relation"] == job.relation], searched)
    by_fact = {f: list(zip(g["layer"].astype(int), g["neuron"].astype(int))) for f, g in own.groupby("fact_id")}
    bags[job.relation].update({f: by_fact.get(f, []) for f in searched["fact_id"]})  # the sample's bags: its halves'
    config = UpdateConfig(facts_per_relation=_edits(settings), seed=_experiment_seed(settings), controls=NON_KN_CONTROLS)
    result = update_facts(adapter, own, facts, _relations_of_all(), config, population=all_facts(), bags=bags,
                          edit_templates={f: sel for f, (sel, _) in split.items()}, avoid=avoid)
    job_progress(job, on_fact)(len(facts))
    table = result.table.assign(half="selection")  # every edited prompt is drawn from its fact's selection half
    return {"table": _parquet_ready(table.assign(model=settings.model)),
            "paraphrases": _parquet_ready(tag_halves(result.paraphrases, split).assign(model=settings.model)),
            "skipped": _skipped_frame(result.skipped, settings, settings.config.method)}


HELD_OUT_UPDATE = register_stage(Stage(
    name="held-out-update", help="update facts through knowledge neurons chosen on half of each fact's prompts: does the edit "
                                 "reach the held-out half as it reaches the rest of its own? (needs attribute and refine)",
    tables=("table", "paraphrases", "skipped"), key_settings=_key, plan=_plan_per_relation("held-out-update"),
    compute=_compute, needs_model=True, depends=("refine",),
    options=(Option("edits_per_relation", int, None, "facts edited per relation (default 10, the paper's; known-facts: 30)"), SEED_OPTION),
))

__all__ = ["HELD_OUT_UPDATE"]
