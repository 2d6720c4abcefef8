"""The ``coverage`` stage: which of the paper's facts a model can be asked (single-token answers).

The paper keeps the facts whose answer is one token of BERT's vocabulary; ``kn_lib`` applies the same
filter with each model's own tokenizer (a causal model: the answer with its leading space, " Paris").
This stage counts, per relation, how many of *all* the paper's facts (27,738 over 34 relations, not a
sample) pass it, so that the book reads a small committed table instead of loading two models and
tokenizing every answer while it builds::

    kn coverage --preset book-sample --model smollm2-135m     # about a minute on 2 CPU cores
    kn coverage --preset book-sample --model gemma3-270m

One shard per relation, table ``coverage``: relation, facts, single_token, coverage (= single_token /
facts), model. A rerun may differ only if the tokenizer or the data change, and both are in the key.
"""

from __future__ import annotations

import pandas as pd

from .. import data
from ..pipeline import target_coverage
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
