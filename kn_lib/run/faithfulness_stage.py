"""``kn faithfulness``: which neurons matter? Every attribution method against exact ablation, per relation
(``experiments.faithfulness``; the book's "Which neurons matter?" chapter). Needs ``refine`` (the refined
knowledge neurons enter as one method, at their own k)::

    kn faithfulness --preset known-facts --model smollm2-135m --benchmark-facts 12
    kn faithfulness --preset known-facts --model gemma3-270m --facts-per-relation 8 --benchmark-facts 5 --logprob-increase no

One shard per relation (a kill loses at most the relation being computed); tables ``curve`` (fact x method
x k), ``ranks`` (fact x method: rank correlations, seconds), ``effects`` (fact x candidate neuron: exact drop
and every score), ``skipped``.
"""

from __future__ import annotations

import pandas as pd

from .experiment_definitions import SEED_OPTION, _bool, _experiment_seed
from .experiment_inputs import _missing_relations, _refine_store, _run_first
from .experiment_stages import _skipped_frame, job_progress
from .registry import Job, KnUsageError, MissingInputs, Option, RunSettings, Stage, StageContext, common_key_settings, register_stage
from .store import cache_key

DEFAULT_BENCHMARK_FACTS = 12  # per relation, the first of the sample


def _config(settings: RunSettings):
    from ..experiments.faithfulness import FaithfulnessConfig

    given = {}
    for name in ("prompts_per_fact", "converged_steps", "top", "random_candidates"):
        if settings.param(name) is not None:
            given[name] = int(settings.param(name))
    if settings.param("logprob_increase") is not None:
        given["logprob_increase"] = _bool(settings.param("logprob_increase"))
    try:
        return FaithfulnessConfig(steps=settings.config.ig.steps, seed=_experiment_seed(settings), **given)
    except ValueError as err:
        raise KnUsageError(f"faithfulness: {err}") from None


def _benchmark_facts(settings: RunSettings) -> int:
    n = settings.param("benchmark_facts")
    n = DEFAULT_BENCHMARK_FACTS if n is None else int(n)
    if n < 1:
        raise KnUsageError(f"--benchmark-facts must be >= 1, got {n}")
    return n


def _key(settings: RunSettings) -> dict:
    from dataclasses import asdict

    from .search_stages import REFINE

    return {**common_key_settings(settings), "experiment": "faithfulness", "refine_key": cache_key(REFINE.key_settings(settings)),
            "relations": settings.relation_ids(), "facts_per_relation": settings.facts_per_relation,
            "benchmark_facts": _benchmark_facts(settings), "config": asdict(_config(settings))}


def _plan(ctx: StageContext) -> list[Job]:
    settings = ctx.settings
    _config(settings)
    store = _refine_store(ctx, settings.config.method)
    missing = _missing_relations(store, settings)
    if missing:
        raise MissingInputs(f"faithfulness: no refined knowledge neurons for {len(missing)} relation(s) ({', '.join(missing[:3])}"
                            f"{', ...' if len(missing) > 3 else ''}) in {store.dir}; run `{_run_first(settings, settings.config.method)}` first")
    n = _benchmark_facts(settings)
    return [Job(relation, relation, tuple(facts[:n])) for relation, facts in settings.sample().items() if facts]


_LOGPROB: dict[int, object] = {}  # one LogprobIncrease per loaded model: its matrices take a minute to build


def _logprob(adapter, wanted: bool):
    from ..experiments.attribution_methods import LogprobIncrease

    if not wanted:
        return None, "logprob-increase not asked (--logprob-increase no)"
    if id(adapter.model) not in _LOGPROB:
        try:
            scorer = LogprobIncrease(adapter)
        except NotImplementedError as err:
            return None, f"logprob-increase not computed: {err}"
        for layer in range(adapter.n_layers):  # built before any prompt is timed (benchmarks/ times the build)
            scorer.mixed(layer)
        _LOGPROB[id(adapter.model)] = scorer
    return _LOGPROB[id(adapter.model)], None


def _compute(ctx: StageContext, job: Job, adapter, on_fact=None) -> dict[str, pd.DataFrame]:
    from ..experiments.evaluation import FactPrompts, SkipLog, answered_correctly
    from ..experiments.faithfulness import faithfulness
    from ..experiments.neuron_sets import neurons_by_fact

    settings, config = ctx.settings, _config(ctx.settings)
    skips = SkipLog("faithfulness")
    refined = _refine_store(ctx, settings.config.method).read("refined", [job.relation])
    prompts = FactPrompts(adapter, job.facts, settings.load_relations(), skips)
    correct = {}
    for fact in job.facts:
        ok = answered_correctly(adapter, prompts.of(fact["fact_id"]))
        if ok:
            correct[fact["fact_id"]] = ok
        else:
            skips.add("no prompt answered top-1", job.relation, fact["fact_id"])
    logprob, why = _logprob(adapter, config.logprob_increase)
    if why:
        skips.add(why, job.relation)
    progress = job_progress(job, on_fact)
    tables = faithfulness(adapter, correct, neurons_by_fact(refined) if len(refined) else {}, config, logprob, progress=progress)
    tables["skipped"] = _skipped_frame(skips.frame(), settings, settings.config.method)
    for name in ("curve", "ranks", "effects"):
        tables[name] = tables[name].assign(model=settings.model) if len(tables[name]) else tables[name]
    progress(len(job.facts))  # the facts skipped above
    return tables


FAITHFULNESS = register_stage(Stage(
    name="faithfulness", help="which neurons matter? IG, its variants, gradient x activation, activation and log-probability "
                              "increase against exact ablation (beyond the paper; needs refine)",
    tables=("curve", "ranks", "effects", "skipped"), key_settings=_key, plan=_plan, compute=_compute, needs_model=True,
    depends=("refine",),
    options=(Option("benchmark_facts", int, None, f"facts per relation benchmarked, the first of the sample (default {DEFAULT_BENCHMARK_FACTS})"),
             Option("prompts_per_fact", int, None, "correctly answered prompts per fact (default 1)"),
             Option("converged_steps", int, None, "Gauss-Legendre nodes of the converged integral (default 32)"),
             Option("top", int, None, "each method's top neurons that become candidates (default 200)"),
             Option("random_candidates", int, None, "random candidate neurons per prompt (default 200)"),
             Option("logprob_increase", str, None, "also score Yu & Ananiadou's log-probability increase: yes (default) or no",
                    choices=("yes", "no")),
             SEED_OPTION),
))

__all__ = ["FAITHFULNESS"]
