"""What a model can be asked and what it knows, over all the paper's facts: ``coverage`` and ``screen``.

``coverage``: which of the paper's facts a model can be asked (single-token answers).

The paper keeps the facts whose answer is one token of BERT's vocabulary; ``kn_lib`` applies the same
filter with each model's own tokenizer (a causal model: the answer with its leading space, " Paris").
This stage counts, per relation, how many of *all* the paper's facts (27,738 over 34 relations, not a
sample) pass it, so that the book reads a small committed table instead of loading two models and
tokenizing every answer while it builds::

    kn coverage --preset book-sample --model smollm2-135m     # about a minute on 2 CPU cores
    kn coverage --preset book-sample --model gemma3-270m

One shard per relation, table ``coverage``: relation, facts, single_token, coverage (= single_token /
facts), model. A rerun may differ only if the tokenizer or the data change, and both are in the key.

``screen``: every usable prompt of every fact asked once, no gradients (``kn_lib.recall``)::

    kn screen --preset paper --model smollm2-135m --threads 2

One shard per relation, tables ``facts`` (per fact: usable prompts, how many the model answers top-1,
any / most) and ``prompts`` (per prompt: p(answer), the answer's rank, the top-1 token). The experiments
that need a fact the model knows draw their facts from it (``RunSettings.known``, the ``known-facts`` preset).
"""

from __future__ import annotations

import pandas as pd

from .. import data
from ..data import Relation
from ..pipeline import target_coverage
from ..recall import screen_facts
from .registry import Job, RunSettings, Stage, StageContext, common_key_settings, register_stage

SCHEMA = {"relation": "str", "facts": "int64", "single_token": "int64", "coverage": "float64", "model": "str"}


def _key(settings: RunSettings) -> dict:
    key = common_key_settings(settings)
    key.pop("seed")  # every fact of the relation, not a seeded sample
    return key


def _plan(ctx: StageContext) -> list[Job]:
    # one placeholder "fact" per relation: the job covers all of the relation's facts, which compute
    # reads itself, so that the manifest does not list 27,738 fact ids
    return [Job(rel, rel, ({"fact_id": f"{rel}/all"},)) for rel in ctx.settings.relation_ids()]


def _compute(ctx: StageContext, job: Job, adapter, on_fact=None) -> dict[str, pd.DataFrame]:
    facts = data.load_facts([job.relation])
    table = target_coverage(adapter, facts)
    table["model"] = ctx.settings.model
    if on_fact is not None:
        on_fact(1)
    return {"coverage": table[list(SCHEMA)].astype(SCHEMA)}


COVERAGE = register_stage(Stage(
    name="coverage", help="single-token answers per relation over all the paper's facts (the book's background chapter)",
    tables=("coverage",), key_settings=_key, plan=_plan, compute=_compute, needs_model=True,
    covers=lambda entry, job: True,  # the key fixes the facts: all of them
))


# -- screen: what the model recalls ------------------------------------------------------------------

SCREEN_BATCH = 64  # prompts of equal length per forward pass


def _screen_plan(ctx: StageContext) -> list[Job]:
    """One shard per relation, all of its facts (a ``--facts-per-relation`` sample when given)."""
    relations = ctx.settings.load_relations()
    jobs = []
    for rel in ctx.settings.relation_ids():
        facts = data.load_facts([rel]).to_list() if ctx.settings.facts_per_relation is None else ctx.settings.sample()[rel]
        jobs.append(Job(rel, rel, tuple(facts), relations[rel].templates))
    return jobs


def _screen_key(settings: RunSettings) -> dict:
    key = common_key_settings(settings)
    if settings.facts_per_relation is None:
        key.pop("seed")  # every fact: no sample
    key["facts_per_relation"] = settings.facts_per_relation
    if settings.facts_per_relation is not None:
        key.update(settings.sample_key())
    return key


def _screen_compute(ctx: StageContext, job: Job, adapter, on_fact=None) -> dict[str, pd.DataFrame]:
    tables = screen_facts(adapter, job.facts, {job.relation: Relation(job.relation, "", "", job.templates)},
                          batch_size=SCREEN_BATCH, on_fact=on_fact)
    return {name: frame.assign(model=ctx.settings.model) for name, frame in tables.items()}


SCREEN = register_stage(Stage(
    name="screen", help="every prompt of every fact asked once: p(answer), rank, top-1; which facts the model knows",
    tables=("facts", "prompts"), key_settings=_screen_key, plan=_screen_plan, compute=_screen_compute, needs_model=True,
))
