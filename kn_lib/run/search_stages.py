"""The built-in stages: ``attribute`` (per chunk of facts) and ``refine`` (per relation).

``pipeline.find_knowledge_neurons`` does both in one call over a list of facts. A long run needs them
apart: attribution is the expensive part and is independent per fact, so it is sharded and resumable;
refinement chooses p per relation from *all* its facts' coarse sets, so it runs per relation over the
stored coarse tables, which is cheap. ``attribute_facts`` + ``refine_tables`` compute the same tables
as ``find_knowledge_neurons`` (tests/test_runner.py checks it).

* ``attribute`` tables: ``prompts`` (every usable prompt, p(answer), top-1), ``coarse`` (neurons above
  t x the prompt's maximum, with scores), ``skipped`` (facts and prompts that could not be used, why).
* ``refine`` tables: ``refined`` (knowledge neurons per fact, with their share of prompts) and
  ``thresholds`` (the p chosen per relation and how the search ended).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable, Mapping

import pandas as pd

from ..adapters import ModelAdapter
from ..data import Relation
from ..pipeline import THRESHOLD_COLUMNS, KNConfig, find_knowledge_neurons, refine_coarse
from ..refine import Neuron
from .registry import (  # noqa: F401  (MissingInputs: raised here)
    Job, MissingInputs, RunSettings, Stage, StageContext, chunks, common_key_settings, ig_settings, register_stage,
    same_facts, stored_threshold,
)

# column -> dtype of every stored table (fixed, so empty shards and reloaded tables keep their types)
SCHEMAS: dict[str, dict[str, str]] = {
    "prompts": {"fact_id": "str", "relation": "str", "template_id": "int64", "text": "str", "p_answer": "float64",
                "correct": "bool", "predicted": "str"},
    "coarse": {"fact_id": "str", "relation": "str", "template_id": "int64", "layer": "int64", "neuron": "int64",
               "score": "float64"},
    "skipped": {"fact_id": "str", "relation": "str", "template_id": "Int64", "reason": "str"},
    "refined": {"fact_id": "str", "relation": "str", "layer": "int64", "neuron": "int64", "share": "float64", "p": "float64"},
    "thresholds": {"relation": "str", "p": "float64", "mean_count": "float64", "converged": "bool", "reason": "str",
                   "n_facts": "int64", "n_facts_few_prompts": "int64", "share_rule": "str"},
}


def table(name: str, rows: list[dict], tag: Mapping[str, object]) -> pd.DataFrame:
    """Rows -> a typed table with the settings tag columns (model, method, ...) appended, as pipeline does."""
    schema = SCHEMAS[name]
    frame = pd.DataFrame(rows, columns=list(schema)).astype(schema)
    for key, value in tag.items():
        frame[key] = value
    return frame


# -- attribution -----------------------------------------------------------------------------------


def attribute_facts(
    adapter: ModelAdapter,
    facts: Iterable[Mapping],
    relations: Mapping[str, Relation],
    config: KNConfig = KNConfig(),
    on_fact: Callable[[int], object] | None = None,
) -> dict[str, pd.DataFrame]:
    """The attribution half of ``find_knowledge_neurons``: prompts, coarse neurons and skips of each fact.

    Calls ``find_knowledge_neurons`` one fact at a time (attribution is per fact; the per-fact
    refinement it also does is cheap and discarded), so that any change to how the pipeline encodes
    and attributes reaches the stage unchanged. (Cleaner, once pipeline is split: pipeline's own
    ``attribute_facts`` and ``refine_coarse``, with ``find_knowledge_neurons`` calling both.)
    """
    parts: dict[str, list[pd.DataFrame]] = {"prompts": [], "coarse": [], "skipped": []}
    for fact in facts:
        result = find_knowledge_neurons(adapter, [fact], relations, config, progress=False)
        for name in parts:
            parts[name].append(getattr(result, name))
        if on_fact is not None:
            on_fact(1)
    tag = {"model": adapter.name, "method": config.method}
    return {name: _typed(name, frames, tag) for name, frames in parts.items()}


def _typed(name: str, frames: list[pd.DataFrame], tag: Mapping[str, object]) -> pd.DataFrame:
    rows = [f[list(SCHEMAS[name])] for f in frames if len(f)]
    return table(name, pd.concat(rows, ignore_index=True).to_dict("records") if rows else [], tag)


def coarse_sets(prompts: pd.DataFrame, coarse: pd.DataFrame, fact_ids: Iterable[str]) -> dict[str, list[set[Neuron]]]:
    """fact -> one coarse set per usable prompt (an empty set for a prompt without coarse neurons),
    for the given facts in the given order; facts without a usable prompt are left out."""
    by_prompt: dict[tuple[str, int], set[Neuron]] = {}
    for f, t, layer, neuron in zip(coarse["fact_id"], coarse["template_id"], coarse["layer"], coarse["neuron"]):
        by_prompt.setdefault((f, int(t)), set()).add((int(layer), int(neuron)))
    templates: dict[str, list[int]] = {}
    for f, t in zip(prompts["fact_id"], prompts["template_id"]):
        templates.setdefault(f, []).append(int(t))
    return {f: [by_prompt.get((f, t), set()) for t in sorted(templates[f])] for f in fact_ids if f in templates}


def refine_tables(
    relation: str, by_fact: Mapping[str, list[set[Neuron]]], config: KNConfig, tag: Mapping[str, object]
) -> dict[str, pd.DataFrame]:
    """The second half of ``find_knowledge_neurons`` for one relation: choose p, keep shared neurons."""
    refined, threshold = refine_coarse(relation, by_fact, config)
    assert list(threshold) == THRESHOLD_COLUMNS
    return {"refined": table("refined", refined, tag), "thresholds": table("thresholds", [threshold], {**tag, **config.as_row()})}


def above_threshold(coarse: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The coarse rows with score > t x their prompt's maximum score.

    Attribution stores coarse neurons at t_stored = min(t, 0.2) (``stored_threshold``); every prompt's
    maximum is among them, so any t >= t_stored is applied here exactly, without attributing again."""
    if coarse.empty:
        return coarse
    top = coarse.groupby(["fact_id", "template_id"])["score"].transform("max")
    return coarse[coarse["score"] > threshold * top]


# -- the stages ------------------------------------------------------------------------------------


def _attribute_key(settings: RunSettings) -> dict:
    # not the fact sample: shards are fixed chunks of each relation's order, shared by every sample size
    # a known-facts sample chunks another order: its own shards (``sample_key`` is empty for uniform samples)
    return {**common_key_settings(settings), **ig_settings(settings.config), "chunk_size": settings.chunk_size,
            **settings.sample_key()}


def _attribute_plan(ctx: StageContext) -> list[Job]:
    relations = ctx.settings.load_relations()
    return [
        Job(f"{rel}/chunk-{i:05d}", rel, chunk, relations[rel].templates)
        for rel, facts in ctx.settings.sample().items()
        for i, chunk in enumerate(chunks(facts, ctx.settings.chunk_size))
    ]


def _attribute_compute(ctx: StageContext, job: Job, adapter: ModelAdapter, on_fact=None) -> dict[str, pd.DataFrame]:
    relation = Relation(job.relation, "", "", job.templates)
    config = replace(ctx.settings.config, threshold=stored_threshold(ctx.settings.config))
    return attribute_facts(adapter, job.facts, {job.relation: relation}, config, on_fact)


def _refine_key(settings: RunSettings) -> dict:
    from .store import cache_key

    c = settings.config
    return {"attribute_key": cache_key(_attribute_key(settings)), "facts_per_relation": settings.facts_per_relation,
            "p_start": c.p_start, "p_step": c.p_step, "kn_low": c.kn_low, "kn_high": c.kn_high,
            "threshold": c.coarse_threshold, "share_rule": c.share_rule, "max_evaluations": c.max_evaluations,
            "min_count": c.min_count}


def _refine_plan(ctx: StageContext) -> list[Job]:
    """One job per relation; every attribution chunk of the relation's sample must be finished."""
    attribution = ctx.inputs("attribute")
    entries = attribution.entries()
    missing = [job.shard for job in _attribute_plan(ctx)
               if job.shard not in entries or not set(job.fact_ids) <= set(entries[job.shard].get("fact_ids", ()))]
    if missing:
        raise MissingInputs(
            f"attribution not finished for {len(missing)} shard(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) "
            f"in {attribution.dir}; run `kn attribute` with the same options first"
        )
    return [Job(rel, rel, tuple(facts)) for rel, facts in ctx.settings.sample().items()]


def _refine_compute(ctx: StageContext, job: Job, adapter=None, on_fact=None) -> dict[str, pd.DataFrame]:
    attribution = ctx.inputs("attribute")
    shards = [s for s in attribution.entries() if s.startswith(f"{job.relation}/")]
    wanted = set(job.fact_ids)
    if shards:
        prompts, coarse = attribution.read("prompts", shards), attribution.read("coarse", shards)
    else:  # no fact of the relation in the sample (a known-facts sample of a relation the model does not know)
        prompts, coarse = table("prompts", [], {}), table("coarse", [], {})
    prompts, coarse = prompts[prompts["fact_id"].isin(wanted)], coarse[coarse["fact_id"].isin(wanted)]
    coarse = above_threshold(coarse, ctx.settings.config.coarse_threshold)
    tables = refine_tables(job.relation, coarse_sets(prompts, coarse, job.fact_ids), ctx.settings.config,
                           {"model": ctx.settings.model, "method": ctx.settings.config.method})
    if on_fact is not None:
        on_fact(len(job.facts))
    return tables


ATTRIBUTE = register_stage(Stage(
    name="attribute", help="attribution scores -> coarse neurons and prompt table, per chunk of facts",
    tables=("coarse", "prompts", "skipped"), key_settings=_attribute_key, plan=_attribute_plan, compute=_attribute_compute,
))
REFINE = register_stage(Stage(
    name="refine", help="adaptive share threshold -> refined knowledge neurons, per relation (needs attribute)",
    tables=("refined", "thresholds"), key_settings=_refine_key, plan=_refine_plan, compute=_refine_compute,
    needs_model=False, depends=("attribute",), covers=same_facts,  # exactly the sample's facts (registry.same_facts)
))
