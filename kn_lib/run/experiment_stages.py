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
"""

from __future__ import annotations

import re
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from .registry import (
    DEFAULT_CHUNK, IGConfig, Job, KNConfig, KnUsageError, MissingInputs, Option, Preset, RunSettings, Stage, StageContext,
    _relations, data_checksums, register_preset, register_stage, same_facts,
)
from .search_stages import REFINE, above_threshold
from .partial import PartialShard
from .store import ResultStore, cache_key

BASELINE = "activation"  # the paper's baseline attribution method


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


_bool.__name__ = "yes/no"  # argparse names the type in its error message


def _optional_int(text: str) -> int | None:
    return None if str(text).lower() in ("all", "none") else int(text)


SEED_OPTION = Option("experiment_seed", int, None, "seed of the experiment's random draws (default: the run's --seed)")


def _experiment_seed(settings: RunSettings) -> int:
    seed = settings.param("experiment_seed")
    return settings.seed if seed is None else int(seed)


def _with_method(settings: RunSettings, method: str) -> RunSettings:
    return replace(settings, config=replace(settings.config, method=method))


def _refine_store(ctx: StageContext, method: str) -> ResultStore:
    return StageContext("refine", _with_method(ctx.settings, method), ctx.root).inputs("refine")


def _missing_relations(store: ResultStore, settings: RunSettings) -> list[str]:
    entries = store.entries()
    return [r for r in settings.relation_ids() if r not in entries]


def _run_first(settings: RunSettings, method: str) -> str:
    """The command that produces refined neurons for these settings (options as the user gave them)."""
    parts = [f"kn run --model {settings.model}"]
    if settings.known is not None:
        parts.append(f"--preset known-facts --known {settings.known}")
    if settings.relations is not None:
        parts.append(f"--relations {','.join(settings.relation_ids())}")
    parts.append(f"--facts-per-relation {settings.facts_per_relation or 'all'} --seed {settings.seed}")
    if settings.config.ig.steps != IGConfig().steps:
        parts.append(f"--steps {settings.config.ig.steps}")
    if settings.chunk_size != DEFAULT_CHUNK:
        parts.append(f"--chunk-size {settings.chunk_size}")
    if method != "ig":
        parts.append(f"--method {method}")
    if settings.config.threshold is not None:
        parts.append(f"--threshold {settings.config.threshold}")
    if settings.config.share_rule != KNConfig().share_rule:
        parts.append(f"--share-rule {settings.config.share_rule}")
    return " ".join(parts)


# -- the experiments -------------------------------------------------------------------------------


def _option(experiment: "Experiment", name: str) -> Option:
    return next(o for o in experiment.options if o.name == name)


class Experiment:
    """One experiment as a stage: its config from the settings, and how to run it on one neuron set."""

    name: str
    help: str
    tables: tuple[str, ...]  # besides "summary" and "skipped"
    options: tuple[Option, ...]
    compares_baseline: bool = False
    needs_bags: bool = False
    # also runs on the matched controls of the knowledge neurons (``experiments.controls``), as shards
    # named after them (``random-layer``, ``activation-matched``)
    has_controls: bool = False
    control_kinds: tuple[str, ...] = ("random-layer", "activation-matched")  # the control shards it plans
    # config fields added after results were committed, with the value that reproduces the code before
    # them: left out of the settings key at that value, so those results stay found (as that variant)
    legacy: Mapping[str, Any] = {}

    def key_config(self, settings: RunSettings) -> dict:
        config = asdict(self.config(settings))
        return {k: v for k, v in config.items() if not (k in self.legacy and v == self.legacy[k])}

    def config(self, settings: RunSettings) -> Any:
        raise NotImplementedError

    def run(self, adapter, refined: pd.DataFrame, facts: list[Mapping], settings: RunSettings, inputs: Mapping) -> Any:
        raise NotImplementedError

    def control(self, kind: str, adapter, refined: pd.DataFrame, facts: list[Mapping], settings: RunSettings,
                inputs: Mapping) -> pd.DataFrame:
        """The neuron set a control shard runs on (default: each fact's knowledge neurons matched)."""
        from ..experiments.controls import control_table

        return control_table(kind, adapter, refined, facts, settings.load_relations(), _experiment_seed(settings))

    def frames(self, result) -> dict[str, pd.DataFrame]:
        return {t: getattr(result, t) for t in self.tables}

    def summaries(self, result) -> list:
        return [result.summary]


class Statistics(Experiment):
    name, help = "statistics", "knowledge neurons per fact, layer distribution, shared neurons (Fig. 3, Table 2; needs refine)"
    tables, compares_baseline = ("table", "layers", "pairs"), True
    options = (Option("max_pairs", int, None, "intra-relation fact pairs before sampling (default 100000)"),
               Option("inter_pairs", str, None, "official (default: 100 partners per fact, relation first) or uniform "
                                                "(ours: every cross-relation pair)", choices=("official", "uniform")),
               SEED_OPTION)

    def config(self, settings):
        from ..experiments import StatisticsConfig

        given = {}
        if settings.param("max_pairs") is not None:
            given["max_pairs"] = int(settings.param("max_pairs"))
        inter_pairs = _option(self, "inter_pairs").check(settings)
        if inter_pairs is not None:
            given["inter_pairs"] = inter_pairs
        return StatisticsConfig(**given, seed=_experiment_seed(settings))

    def run(self, adapter, refined, facts, settings, inputs):
        from ..experiments import neuron_statistics

        return neuron_statistics(refined, inputs["searched"], adapter.n_layers if adapter is not None else None, self.config(settings))


class SuppressAmplify(Experiment):
    name, help = "suppress-amplify", "suppress (x0) and amplify (x2) knowledge neurons: answer probability (Fig. 4, 5; needs refine)"
    tables, compares_baseline, has_controls = ("table", "by_relation", "by_relation_kn_only"), True, True
    # and the non-KN controls (no knowledge neuron of any sampled fact; signed match), as their own shards
    control_kinds = ("random-layer", "activation-matched", "random-layer-non-kn", "activation-matched-non-kn")
    options = (Option("unrelated", _bool, None, "also apply each fact's neurons to a fact of another relation, yes or no (default yes)"),
               Option("averaging", str, None, "official (default: facts without knowledge neurons count as zero change) "
                                              "or kn_only (ours: facts with knowledge neurons only)", choices=("official", "kn_only")),
               Option("unrelated_pool", str, None, "where unrelated facts come from: all (default, official: every fact of the "
                                                   "other relations) or sample (ours: the sample's)", choices=("all", "sample")),
               Option("flips", _bool, None, "also record each prompt's top-1 answer before and after, yes or no (default yes)"),
               SEED_OPTION)
    legacy = {"unrelated_pool": "sample", "flips": False}

    def config(self, settings):
        from ..experiments import ManipulationConfig

        unrelated, averaging = settings.param("unrelated"), _option(self, "averaging").check(settings)
        pool, flips = _option(self, "unrelated_pool").check(settings), settings.param("flips")
        return ManipulationConfig(seed=_experiment_seed(settings), unrelated=True if unrelated is None else _bool(unrelated),
                                  **({} if averaging is None else {"averaging": averaging}),
                                  **({} if pool is None else {"unrelated_pool": pool}),
                                  **({} if flips is None else {"flips": _bool(flips)}))

    def run(self, adapter, refined, facts, settings, inputs):
        from ..experiments import suppress_and_amplify

        config = self.config(settings)
        if inputs.get("control"):  # a control answers "is it these neurons?" on the fact's own prompts only
            config = replace(config, unrelated=False)
        if config.unrelated and config.unrelated_pool == "all":
            return suppress_and_amplify(adapter, refined, facts, _relations_of_all(), config, population=all_facts(),
                                        progress=inputs.get("progress"))
        return suppress_and_amplify(adapter, refined, facts, settings.load_relations(), config, progress=inputs.get("progress"))


class BingRel(Experiment):
    name, help = "bingrel", "activation of knowledge neurons on BINGREL sentences T1/T2/T3 (Tables 3, 4; needs refine)"
    tables, compares_baseline, needs_bags = ("table", "by_relation"), True, True
    options = (
        Option("max_sentences", _optional_int, None, "sentences per bag and type, or 'all' (default all, up to ten)"),
        Option("max_words", int, None, "the random masked word is among the first N words (default 50)"),
        Option("max_tokens", int, None, "longer encodings are skipped (default 512)"),
        Option("relation_mean", str, None, "Table 4's mean over relations: official (default: every relation of the run, "
                                           "one without data at 0) or present (ours: relations with data)",
               choices=("official", "present")),
        SEED_OPTION,
    )
    legacy = {"relation_mean": "present"}

    def config(self, settings):
        from ..experiments import BingRelConfig

        given = {k: settings.param(k) for k in ("max_sentences", "max_words", "max_tokens")}
        mean = _option(self, "relation_mean").check(settings)
        return BingRelConfig(seed=_experiment_seed(settings), **{k: int(v) for k, v in given.items() if v is not None},
                             **({} if mean is None else {"relation_mean": mean}))

    def run(self, adapter, refined, facts, settings, inputs):
        from ..experiments import bingrel_activation

        return bingrel_activation(adapter, refined, inputs["bags"], self.config(settings))


class Update(Experiment):
    name, help = "update", "update facts by editing knowledge neurons' value slots, against random neurons (Table 6; needs refine)"
    tables = ("table", "ppl_prompts", "paraphrases")
    options = (
        Option("edits_per_relation", int, None, "facts edited per relation (default 10, the paper's)"),
        Option("max_share", float, None, "keep neurons shared by fewer than this share of the relation's facts (default 0.1)"),
        Option("lambda1", float, None, "weight removed from the old answer's embedding (default 1)"),
        Option("lambda2", float, None, "weight added of the new answer's embedding (default 8)"),
        Option("intra_facts", int, None, "other facts of the relation for Delta intra-relation PPL (default 5)"),
        Option("inter_facts", int, None, "facts of other relations for Delta inter-relation PPL (default 5)"),
        Option("random_control", _bool, None, "repeat each edit on as many random neurons, yes or no (default yes)"),
        Option("controls", str, None, "also repeat each edit on the matched controls: yes (default: same-layer random, "
                                      "activation-matched), non-kn (instead their forms that avoid every knowledge neuron "
                                      "of the sample, the signed match: the same edits) or no"),
        Option("sign_aware", _bool, None, "flip the edit of neurons with negative activation, yes or no (default no; not the paper's)"),
        Option("selection", str, None, "which neurons are edited: official (default, select_kn: count over the relation's "
                                       "bags, own included, at most 10%%) or ours (shared by fewer than 10%% of the other facts)",
               choices=("official", "ours")),
        Option("sampling", str, None, "official (default: facts with replacement, t' and perplexity facts from all the "
                                      "relation's facts) or ours (without replacement, from the sample)",
               choices=("official", "ours")),
        SEED_OPTION,
    )
    legacy = {"selection": "ours", "sampling": "ours", "max_draws": 10000, "controls": ()}
    _fields = {"edits_per_relation": ("facts_per_relation", int), "max_share": ("max_share", float), "lambda1": ("lambda1", float),
               "lambda2": ("lambda2", float), "intra_facts": ("intra_facts", int), "inter_facts": ("inter_facts", int),
               "random_control": ("random_control", _bool), "sign_aware": ("sign_aware", _bool)}

    def config(self, settings):
        from ..experiments import UpdateConfig

        given = {field: cast(settings.param(opt)) for opt, (field, cast) in self._fields.items() if settings.param(opt) is not None}
        for name in ("selection", "sampling"):
            value = _option(self, name).check(settings)
            if value is not None:
                given[name] = value
        controls = settings.param("controls")
        if controls is not None and str(controls).strip().lower() == "non-kn":
            from ..experiments.controls import NON_KN_CONTROLS

            given["controls"] = NON_KN_CONTROLS
        elif controls is not None and not _bool(controls):
            given["controls"] = ()
        return UpdateConfig(seed=_experiment_seed(settings), **given)

    def run(self, adapter, refined, facts, settings, inputs):
        from ..experiments import update_facts

        config = self.config(settings)
        official = config.sampling == "official"
        partial = inputs.get("partial")  # a long shard's relations, saved as each one's edits are measured
        return update_facts(adapter, refined, facts, _relations_of_all() if official else settings.load_relations(), config,
                            inputs.get("searched"), population=all_facts() if official else None,
                            bags=inputs.get("bags") if config.selection == "official" else None, progress=inputs.get("progress"),
                            resume=partial.finished() if partial else None, on_relation=partial.save if partial else None)

    def summaries(self, result):
        return list(result.summary)


MIN_ERASE_FACTS = 20  # a known-facts sample erases the relations with at least this many known facts


class Erase(Experiment):
    name, help = "erase", "erase relations by zeroing their top knowledge neurons' value slots: perplexity (Table 5; needs refine)"
    tables, has_controls = ("table", "by_relation", "neurons"), True
    options = (
        Option("erase_relations", str, None, "comma-separated relations to erase (default: the paper's P19,P27,P106,P937 "
                                             "among the sample's, else every relation of the sample; a known-facts "
                                             "sample: every relation with at least 20 known facts in it)"),
        Option("top_k", int, None, "most frequent knowledge neurons erased per relation (default 20)"),
        Option("max_other_facts", _optional_int, None, "facts of other relations evaluated, a uniform sample over all "
                                                       "their facts, or 'all' (default all, as the official script)"),
        Option("ties", str, None, "order of tied neuron counts: first (default, official Counter.most_common: first "
                                  "seen in bag order) or index (ours: lower layer and index)", choices=("first", "index")),
        Option("erased_facts", str, None, "facts of the erased relation measured: all (default, official) or sample "
                                          "(ours: the analysed facts only)", choices=("all", "sample")),
        SEED_OPTION,
    )
    legacy = {"ties": "index", "erased_facts": "sample"}

    def control(self, kind, adapter, refined, facts, settings, inputs):
        """The knowledge neurons themselves: the erasure matches each relation's top neurons (``control``)."""
        return refined

    def config(self, settings):
        from ..experiments import EraseConfig
        from ..experiments.erase_relations import PAPER_RELATIONS

        sample = settings.relation_ids()
        given = settings.param("erase_relations")
        if given:
            erase = tuple(dict.fromkeys(r.strip() for r in str(given).split(",") if r.strip()))
            outside = [r for r in erase if r not in sample]
            if outside:
                raise KnUsageError(f"--erase-relations {','.join(outside)}: not in the fact sample ({','.join(sample)}); "
                                   "add them with --relations")
        elif settings.known is not None:  # a known-facts sample: every relation with enough known facts
            need = min(MIN_ERASE_FACTS, settings.facts_per_relation or MIN_ERASE_FACTS)  # a smaller sample: full relations
            erase = tuple(r for r, facts in settings.sample().items() if len(facts) >= need)
            if not erase:
                raise MissingInputs(f"no relation of the sample has {need} facts the model knows; "
                                    "name relations with --erase-relations")
        else:
            erase = tuple(r for r in PAPER_RELATIONS if r in sample) or tuple(sample)
        extra = {k: int(settings.param(k)) for k in ("top_k",) if settings.param(k) is not None}
        other = settings.param("max_other_facts")
        if other is not None:
            extra["max_other_facts"] = int(other)
        for name in ("ties", "erased_facts"):
            value = _option(self, name).check(settings)
            if value is not None:
                extra[name] = value
        return EraseConfig(relations=erase, seed=_experiment_seed(settings), **extra)

    def run(self, adapter, refined, facts, settings, inputs):
        from ..experiments import erase_relations
        from ..experiments.erase_relations import ErasedRelation

        config = self.config(settings)
        if config.ties == "first":  # bags in the official order: facts by data index, neurons by first appearance
            refined = ordered_refined(refined, inputs["coarse"])
        everything = config.erased_facts == "all" or config.max_other_facts is not None
        population = all_facts() if everything else None
        relations = _relations_of_all() if everything else settings.load_relations()
        partial = inputs.get("partial")  # a long shard's erased relations, saved as each is measured
        resume = {r: ErasedRelation(t["table"], t["neurons"]) for r, t in partial.finished().items()} if partial else None
        save = (lambda r, e: partial.save(r, {"table": e.rows, "neurons": e.neurons})) if partial else None
        return erase_relations(adapter, refined, facts, relations, config, population, control=inputs.get("control"),
                               progress=inputs.get("progress"), resume=resume, on_relation=save, before=inputs.get("before"))


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (Statistics(), SuppressAmplify(), BingRel(), Update(), Erase())}


# -- what the official definitions read beyond the sample -------------------------------------------


def all_facts() -> list[dict]:
    """Every fact of every relation, in data order: the population the official scripts draw from
    (unrelated facts, new answers, perplexity facts, the erased relation's facts)."""
    from .. import data

    return _all_facts(tuple(data.relation_ids()))


@lru_cache(maxsize=2)
def _all_facts(relations: tuple[str, ...]) -> list[dict]:
    from .. import data

    return data.load_facts(list(relations)).to_list()


def _relations_of_all():
    """Every relation's templates: the official draws reach beyond the sample's relations."""
    from .. import data

    return _relations(tuple(data.relation_ids()))


def largest_bags(ctx: StageContext, settings: RunSettings, relations: list[str], refined: pd.DataFrame,
                 searched: pd.DataFrame) -> dict[str, dict[str, list]]:
    """Per relation, the bags the official ``select_kn`` counts over: every fact searched in the refine
    results of this model and method (same attribution and refinement settings, any fact sample) that
    search the most facts of the relation, empty bags included, together with the analysed sample's own.
    (The official script searched every fact; a store holds a sample, so the largest one is used.)"""
    from ..experiments.neuron_sets import neurons_by_fact

    own_key = REFINE.key_settings(settings)
    method_store = StageContext("attribute", settings, ctx.root).inputs("attribute")
    attribute_settings = _sample_free(method_store.manifest().get("settings", {})) if method_store.exists() else None
    best: dict[str, tuple[int, str, list[str]]] = {}
    base = Path(ctx.root) / settings.model / "refine"
    for manifest_path in sorted(base.glob("*/manifest.json")) if base.is_dir() else []:
        store = ResultStore(ctx.root, settings.model, "refine", manifest_path.parent.name)
        try:
            manifest = store.manifest()
            key = manifest["settings"]
            if {k: v for k, v in key.items() if k not in ("attribute_key", "facts_per_relation")} != \
                    {k: v for k, v in own_key.items() if k not in ("attribute_key", "facts_per_relation")}:
                continue
            attribute = ResultStore(ctx.root, settings.model, "attribute", key["attribute_key"])
            if _sample_free(attribute.manifest().get("settings", {})) != attribute_settings:
                continue
            entries = store.entries()
        except Exception:  # an unreadable store is not a candidate (``kn info --verify`` reports it)
            continue
        for relation in relations:
            ids = list(entries.get(relation, {}).get("fact_ids", ()))
            if len(ids) > best.get(relation, (0, "", []))[0]:
                best[relation] = (len(ids), store.key, ids)
    own = neurons_by_fact(refined)
    searched_by = {r: list(g["fact_id"]) for r, g in searched.groupby("relation")} if len(searched) else {}
    out: dict[str, dict[str, list]] = {}
    for relation in relations:
        _, key, ids = best.get(relation, (0, "", []))
        found = neurons_by_fact(ResultStore(ctx.root, settings.model, "refine", key).read("refined", [relation])) if key else {}
        bags = {f: found.get(f, []) for f in ids}
        for f in searched_by.get(relation, ()):  # the sample's own bags (a fact of both: the same search)
            bags.setdefault(f, own.get(f, []))
        out[relation] = bags
    return out


def _sample_free(attribute_settings: Mapping) -> dict:
    """Attribution settings without what only picks the fact sample."""
    return {k: v for k, v in attribute_settings.items() if k not in ("chunk_size", "known", "screen_key")}


def ordered_refined(refined: pd.DataFrame, coarse: pd.DataFrame) -> pd.DataFrame:
    """The refined table reordered as the official bag lists are (``neuron_sets.official_bag_order``)."""
    from ..experiments.neuron_sets import official_bag_order

    if refined.empty:
        return refined
    order = official_bag_order(refined, coarse)
    rank = {(f, n): (i, j) for i, (f, ns) in enumerate(order.items()) for j, n in enumerate(ns)}
    keys = [rank[(f, (int(l), int(n)))] for f, l, n in zip(refined["fact_id"], refined["layer"], refined["neuron"])]
    return refined.iloc[sorted(range(len(refined)), key=keys.__getitem__)].reset_index(drop=True)


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


def measured_before(store, shard: str) -> dict[tuple[str, int], tuple[float, bool]]:
    """Erase: (p(answer), top-1 correct) of every unedited prompt the ``shard`` of ``store`` measured, finished
    or saved so far (``PartialShard``), by (fact id, template id); its controls measure the same prompts."""
    if store.check(shard).ok:
        frames = [store.read("table", [shard])]
    else:
        frames = [t["table"] for t in PartialShard.of(store.dir, shard).finished().values()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return {}
    table = pd.concat(frames, ignore_index=True).drop_duplicates(["fact_id", "template_id"])
    return {(f, int(t)): (float(p), bool(c)) for f, t, p, c in
            zip(table["fact_id"], table["template_id"], table["p_before"], table["correct_before"])}


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
