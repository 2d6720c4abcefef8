"""The paper's experiments as the ``kn`` command knows them (``statistics``, ``suppress-amplify``,
``bingrel``, ``update``, ``erase``): each one's options, its config from the run's settings, and how it
runs on one neuron set (``Experiment``; the registry of them is ``EXPERIMENTS``), with the option types
and the experiment seed that other stages share.

Apart from ``experiment_stages``, which turns each into a stage (key, plan, compute, tables): this module
says what an experiment is, that one how it runs as shards of the results store.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Mapping

import pandas as pd

from .registry import KnUsageError, MissingInputs, Option, RunSettings
from .experiment_inputs import _relations_of_all, all_facts, ordered_refined


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
