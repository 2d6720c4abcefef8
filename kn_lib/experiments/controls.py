"""Matched controls: neuron sets that look like a fact's knowledge neurons but are not them.

The paper compares knowledge neurons only with its activation baseline, and a uniform random draw is a
weak control: knowledge neurons sit in the top layers, where any neuron may matter more. Each control
here replaces every knowledge neuron by one non-knowledge neuron *of the same layer*, so an effect that
survives "KN minus control" is not explained by which layers were touched:

* ``random-layer`` (``layer_matched``): a uniformly random neuron of the layer, seeded per fact;
* ``activation-matched`` (``activation_matched``): the neuron of the layer whose activation at the answer
  position, averaged over the fact's prompts, is closest in magnitude to the knowledge neuron's, so the
  control also removes (or doubles, or rewrites) as much signal.

Both return a table shaped like a refined table (``fact_id``, ``relation``, ``layer``, ``neuron``) with
``method`` set to the control's name, so every experiment accepts it in place of knowledge neurons.
A fact's control neurons never include a neuron in ``exclude`` (default: the fact's own knowledge
neurons; erasing a relation excludes every knowledge neuron of the relation).
"""

from __future__ import annotations

import random
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

from ..adapters import ModelAdapter
from ..data import Relation
from ..refine import Neuron
from .evaluation import FactPrompts, SkipLog, seeded_rng
from .neuron_sets import REFINED_COLUMNS, check_refined, neurons_by_fact, relation_of

CONTROLS = ("random-layer", "activation-matched")


def layer_matched_neurons(neurons: Sequence[Neuron], n_neurons: int, rng: random.Random,
                          exclude: Iterable[Neuron] = ()) -> list[Neuron]:
    """For each neuron (layer, i), a distinct random neuron (layer, j) of the same layer, j not in
    ``exclude`` nor among the neurons themselves; in the neurons' order."""
    taken = set(map(tuple, neurons)) | set(map(tuple, exclude))
    out = []
    for layer, _ in neurons:
        free = n_neurons - sum(1 for (l, _) in taken if l == layer)
        if free <= 0:
            raise ValueError(f"layer {layer} has no neuron left to draw a control from")
        while True:
            candidate = (int(layer), rng.randrange(n_neurons))
            if candidate not in taken:
                taken.add(candidate)
                out.append(candidate)
                break
    return out


def activation_matched_neurons(neurons: Sequence[Neuron], activations: torch.Tensor,
                               exclude: Iterable[Neuron] = ()) -> list[Neuron]:
    """For each neuron (layer, i), the neuron (layer, j) whose mean activation magnitude |a[layer, j]| is
    closest to |a[layer, i]|, j not in ``exclude``, not a neuron of the set and not chosen before (ties to
    the lower j). ``activations``: [n_layers, n_neurons], the mean at the answer position over the fact's
    prompts."""
    taken = set(map(tuple, neurons)) | set(map(tuple, exclude))
    out = []
    for layer, index in neurons:
        magnitude = activations[layer].abs().double()
        gap = (magnitude - magnitude[index]).abs()
        for (l, j) in taken:
            if l == layer:
                gap[j] = float("inf")
        j = int(torch.argmin(gap))  # argmin returns the first (lowest) index among ties
        if not torch.isfinite(gap[j]):
            raise ValueError(f"layer {layer} has no neuron left to match")
        taken.add((int(layer), j))
        out.append((int(layer), j))
    return out


def mean_answer_activations(adapter: ModelAdapter, prompts: FactPrompts, fact_ids: Iterable[str]) -> torch.Tensor | None:
    """The FFN activations at the answer position [n_layers, n_neurons], averaged over the usable prompts
    of the given facts (None when none is usable)."""
    total, n = None, 0
    for fact_id in fact_ids:
        for prompt in prompts.of(fact_id):
            acts = adapter.activations(prompt.encoded).double()
            total = acts if total is None else total + acts
            n += 1
    return None if total is None else (total / n).float()


def _frame(rows: list[dict], refined: pd.DataFrame, method: str, seed: int) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(REFINED_COLUMNS))
    frame["model"] = refined["model"].iloc[0] if "model" in refined.columns and len(refined) else "?"
    frame["method"], frame["seed"] = method, seed
    return frame


def layer_matched(refined: pd.DataFrame, n_neurons: int, seed: int = 0,
                  exclude: Mapping[str, Iterable[Neuron]] | None = None) -> pd.DataFrame:
    """The ``random-layer`` control of a refined table: per fact, one random same-layer neuron per knowledge
    neuron (``layer_matched_neurons``), drawn from ``seeded_rng(seed, fact_id)``, so a fact's control
    does not depend on the other facts of the run. ``exclude``: fact -> neurons also to avoid."""
    check_refined(refined)
    relation, rows = relation_of(refined), []
    for fact_id, kns in neurons_by_fact(refined).items():
        avoid = list(exclude.get(fact_id, ())) if exclude else []
        for layer, neuron in layer_matched_neurons(kns, n_neurons, seeded_rng(seed, f"random-layer/{fact_id}"), avoid):
            rows.append({"fact_id": fact_id, "relation": relation[fact_id], "layer": layer, "neuron": neuron})
    return _frame(rows, refined, "random-layer", seed)


def activation_matched(adapter: ModelAdapter, refined: pd.DataFrame, facts: Iterable[Mapping],
                       relations: Mapping[str, Relation], seed: int = 0,
                       exclude: Mapping[str, Iterable[Neuron]] | None = None) -> pd.DataFrame:
    """The ``activation-matched`` control of a refined table: per fact, for each knowledge neuron the
    same-layer neuron closest in mean activation magnitude over the fact's prompts. A fact without usable
    prompts keeps no control neuron (and is skipped by the experiment as for its knowledge neurons).
    ``seed`` is only recorded (the match is deterministic)."""
    check_refined(refined)
    prompts = FactPrompts(adapter, facts, relations, SkipLog("activation_matched"))
    relation, rows = relation_of(refined), []
    for fact_id, kns in neurons_by_fact(refined).items():
        if fact_id not in prompts.facts:
            continue
        acts = mean_answer_activations(adapter, prompts, [fact_id])
        if acts is None:
            continue
        avoid = list(exclude.get(fact_id, ())) if exclude else []
        for layer, neuron in activation_matched_neurons(kns, acts, avoid):
            rows.append({"fact_id": fact_id, "relation": relation[fact_id], "layer": layer, "neuron": neuron})
    return _frame(rows, refined, "activation-matched", seed)


def control_table(kind: str, adapter: ModelAdapter, refined: pd.DataFrame, facts: Iterable[Mapping],
                  relations: Mapping[str, Relation], seed: int = 0) -> pd.DataFrame:
    """The control ``kind`` (one of ``CONTROLS``) of a refined table."""
    if kind == "random-layer":
        return layer_matched(refined, adapter.n_neurons, seed)
    if kind == "activation-matched":
        return activation_matched(adapter, refined, facts, relations, seed)
    raise ValueError(f"unknown control {kind!r}; expected one of {', '.join(CONTROLS)}")
