"""Knowledge-neuron sets read from the pipeline's ``refined`` table, and random sets to compare with.

A ``refined`` table (``kn_lib.pipeline.KNResult.refined``) has one row per (fact, layer, neuron).
Facts whose search found no neuron have no row; experiments that must count them take the fact list
separately.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterable

import pandas as pd

from ..refine import Neuron
from .evaluation import seeded_rng

REFINED_COLUMNS = ("fact_id", "relation", "layer", "neuron")


def check_refined(refined: pd.DataFrame) -> None:
    """A clear message when the table is not a refined table."""
    missing = [c for c in REFINED_COLUMNS if c not in refined.columns]
    if missing:
        raise ValueError(f"refined table lacks columns {missing} (expected KNResult.refined)")


def neurons_by_fact(refined: pd.DataFrame, ordered: bool = False) -> dict[str, list[Neuron]]:
    """fact id -> its knowledge neurons, sorted by (layer, index); with ``ordered``, in the table's row
    order instead (a bag listed as ``official_bag_order`` lists it), each neuron once."""
    check_refined(refined)
    out: dict[str, list[Neuron]] = {}
    for fact_id, layer, neuron in zip(refined["fact_id"], refined["layer"], refined["neuron"]):
        out.setdefault(fact_id, []).append((int(layer), int(neuron)))
    return {f: list(dict.fromkeys(ns)) if ordered else sorted(set(ns)) for f, ns in out.items()}


def data_order(fact_id: str) -> tuple:
    """Sort key of a fact id in data order: ``"<relation>/<index>"`` by relation, then index (the order
    of the official bag lists, ``query_pairs.json``); ids of another form after, by name."""
    head, _, tail = fact_id.rpartition("/")
    return (head, 0, int(tail), "") if tail.isdigit() else (head, 1, 0, tail)


def relation_of(refined: pd.DataFrame) -> dict[str, str]:
    """fact id -> relation."""
    return dict(zip(refined["fact_id"], refined["relation"]))


def most_frequent(neuron_lists: Iterable[Iterable[Neuron]], k: int, ties: str = "first") -> list[tuple[Neuron, int]]:
    """The k neurons found in the most sets, with their counts.

    Ties (``ties``): ``"first"`` (official, ``7_erase_knowledge.py``'s ``Counter.most_common``) go to the
    neuron seen first, walking the sets in the order given and each set in its own order (pass the
    relation's bags in data order, each bag in ``official_bag_order``); ``"index"`` (ours before) to the
    lower (layer, index)."""
    if ties not in ("first", "index"):
        raise ValueError(f"ties must be 'first' or 'index', got {ties!r}")
    counts: Counter = Counter()
    for ns in neuron_lists:
        counts.update(list(dict.fromkeys(ns)))  # a neuron once per set, in the set's order
    if ties == "first":
        return counts.most_common(k)  # stable: equal counts keep first-insertion order
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]


def official_bag_order(refined: pd.DataFrame, coarse: pd.DataFrame) -> dict[str, list[Neuron]]:
    """fact id -> its knowledge neurons in the order the official ``2_get_kn.py`` writes a bag: by first
    appearance walking the fact's prompts in template order, each prompt's coarse neurons by (layer,
    index) (its ``Counter`` keeps insertion order). ``coarse``: the fact's coarse rows (``fact_id``,
    ``template_id``, ``layer``, ``neuron``) at the refinement's threshold. Facts come in data order
    (``"<relation>/<index>"`` by index), as the official bag lists do."""
    first: dict[tuple[str, Neuron], int] = {}
    for f, t, layer, neuron in zip(coarse["fact_id"], coarse["template_id"], coarse["layer"], coarse["neuron"]):
        key = (f, (int(layer), int(neuron)))
        first[key] = min(first.get(key, int(t)), int(t))
    bags = neurons_by_fact(refined)
    return {f: sorted(bags[f], key=lambda n: (first.get((f, n), 1 << 30), n)) for f in sorted(bags, key=data_order)}


def random_neurons(n: int, n_layers: int, n_neurons: int, rng: random.Random, exclude: Iterable[Neuron] = ()) -> list[Neuron]:
    """n distinct neurons drawn uniformly over all layers and indices, none of them in ``exclude``."""
    excluded = set(exclude)
    if n + len(excluded) > n_layers * n_neurons:
        raise ValueError(f"cannot draw {n} random neurons from {n_layers} x {n_neurons} minus {len(excluded)}")
    chosen: list[Neuron] = []
    while len(chosen) < n:
        flat = rng.randrange(n_layers * n_neurons)
        neuron = (flat // n_neurons, flat % n_neurons)
        if neuron not in excluded:
            excluded.add(neuron)
            chosen.append(neuron)
    return sorted(chosen)


def random_like(refined: pd.DataFrame, n_layers: int, n_neurons: int, seed: int = 0) -> pd.DataFrame:
    """A control table: the same facts with the same number of neurons each, drawn uniformly at random
    (excluding the fact's own knowledge neurons). Its ``method`` column is ``"random"`` and ``seed``
    records the draw; any experiment accepts it in place of a refined table."""
    rows = []
    relation = relation_of(refined)
    for fact_id, kns in neurons_by_fact(refined).items():
        for layer, neuron in random_neurons(len(kns), n_layers, n_neurons, seeded_rng(seed, fact_id), exclude=kns):
            rows.append({"fact_id": fact_id, "relation": relation[fact_id], "layer": layer, "neuron": neuron})
    frame = pd.DataFrame(rows, columns=list(REFINED_COLUMNS))
    frame["model"] = refined["model"].iloc[0] if "model" in refined.columns and len(refined) else "?"
    frame["method"] = "random"
    frame["seed"] = seed
    return frame
