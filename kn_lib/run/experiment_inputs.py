"""What the experiment stages read besides their own shards: the refined knowledge neurons of ``refine``
(and the command that makes them when they are missing), the population the official definitions draw
from beyond the sample (every fact, every relation's templates), the largest bags the store holds for the
official ``select_kn``, the official bag order, and what erase's knowledge-neuron shard measured before.

Apart from ``experiment_stages`` so that the experiments (``experiment_definitions``) and the stages built
on them (``experiment_stages``, ``critique_stages``, ``null_stages``, the held-out stages) read them from one
place below both.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import pandas as pd

from .registry import DEFAULT_CHUNK, IGConfig, KNConfig, RunSettings, StageContext, _relations
from .search_stages import REFINE
from .partial import PartialShard
from .result_store import ResultStore


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
