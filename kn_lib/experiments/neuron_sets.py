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


def neurons_by_fact(refined: pd.DataFrame) -> dict[str, list[Neuron]]:
    """fact id -> its knowledge neurons, sorted by (layer, index)."""
    check_refined(refined)
    out: dict[str, list[Neuron]] = {}
    for fact_id, layer, neuron in zip(refined["fact_id"], refined["layer"], refined["neuron"]):
        out.setdefault(fact_id, []).append((int(layer), int(neuron)))
    return {f: sorted(set(ns)) for f, ns in out.items()}


def relation_of(refined: pd.DataFrame) -> dict[str, str]:
    """fact id -> relation."""
    return dict(zip(refined["fact_id"], refined["relation"]))


def most_frequent(neuron_lists: Iterable[Iterable[Neuron]], k: int) -> list[tuple[Neuron, int]]:
    """The k neurons found in the most sets, with their counts; ties go to the lower (layer, index)
    so that the choice is reproducible."""
    counts = Counter(n for ns in neuron_lists for n in set(ns))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]


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
