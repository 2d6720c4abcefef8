"""Matched controls: neuron sets that look like a fact's knowledge neurons but are not them.

The paper compares knowledge neurons only with its activation baseline, and a uniform random draw is a
weak control: knowledge neurons sit in the top layers, where any neuron may matter more. Each control
here replaces every knowledge neuron by one non-knowledge neuron *of the same layer*, so an effect that
survives "KN minus control" is not explained by which layers were touched:

* ``random-layer`` (``layer_matched``): a uniformly random neuron of the layer, seeded per fact;
* ``activation-matched`` (``activation_matched``): the neuron of the layer whose activation at the answer
  position, averaged over the fact's prompts, is closest in magnitude to the knowledge neuron's, so the
  control also removes (or doubles, or rewrites) as much signal.

``matched_neurons`` is the one place that turns a list of neurons into its control; ``control_table``
applies it per fact to a refined table (never a neuron of the fact's own set), giving a table shaped
like a refined table with ``method`` set to the control's name, so every experiment accepts it in place
of knowledge neurons. The update repeats each edit on the edited neurons' control, and the erasure
matches a relation's top neurons, avoiding every knowledge neuron of the relation.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Mapping, Sequence

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


def matched_neurons(kind: str, neurons: Sequence[Neuron], n_neurons: int, exclude: Iterable[Neuron],
                    rng: Callable[[], random.Random], activations: Callable[[], torch.Tensor]) -> list[Neuron]:
    """The control ``kind`` (one of ``CONTROLS``) of ``neurons``, none of them in ``exclude``: a random
    same-layer neuron drawn from ``rng()`` (``layer_matched_neurons``), or the same-layer neuron closest
    in mean activation ``activations()`` (``activation_matched_neurons``). Each argument is called only by
    the control that needs it, so the other costs nothing (no forward pass, no draw)."""
    if kind == "random-layer":
        return layer_matched_neurons(neurons, n_neurons, rng(), exclude)
    if kind == "activation-matched":
        return activation_matched_neurons(neurons, activations(), exclude)
    raise ValueError(f"unknown control {kind!r}; expected one of {', '.join(CONTROLS)}")


def _table(kind: str, refined: pd.DataFrame, n_neurons: int, seed: int,
           activations_of: Callable[[str], torch.Tensor | None]) -> pd.DataFrame:
    """``kind``'s control of each fact of a refined table (``matched_neurons``; the random draw seeded by
    ``seeded_rng(seed, "random-layer/<fact>")``, so a fact's control does not depend on the run's other
    facts). A fact whose activations are None (no usable prompt) keeps no control neuron."""
    check_refined(refined)
    relation, rows = relation_of(refined), []
    for fact_id, kns in neurons_by_fact(refined).items():
        acts = activations_of(fact_id) if kind == "activation-matched" else None
        if kind == "activation-matched" and acts is None:
            continue
        chosen = matched_neurons(kind, kns, n_neurons, (), lambda: seeded_rng(seed, f"random-layer/{fact_id}"), lambda: acts)
        rows += [{"fact_id": fact_id, "relation": relation[fact_id], "layer": layer, "neuron": neuron} for layer, neuron in chosen]
    frame = pd.DataFrame(rows, columns=list(REFINED_COLUMNS))
    frame["model"] = refined["model"].iloc[0] if "model" in refined.columns and len(refined) else "?"
    frame["method"], frame["seed"] = kind, seed
    return frame


def layer_matched(refined: pd.DataFrame, n_neurons: int, seed: int = 0) -> pd.DataFrame:
    """The ``random-layer`` control of a refined table: per fact, one random same-layer neuron per knowledge
    neuron, drawn from ``seeded_rng(seed, "random-layer/<fact>")``."""
    return _table("random-layer", refined, n_neurons, seed, lambda fact_id: None)


def activation_matched(adapter: ModelAdapter, refined: pd.DataFrame, facts: Iterable[Mapping],
                       relations: Mapping[str, Relation], seed: int = 0) -> pd.DataFrame:
    """The ``activation-matched`` control of a refined table: per fact, for each knowledge neuron the
    same-layer neuron closest in mean activation magnitude over the fact's prompts. A fact without usable
    prompts keeps no control neuron (and is skipped by the experiment as for its knowledge neurons).
    ``seed`` is only recorded (the match is deterministic)."""
    prompts = FactPrompts(adapter, facts, relations, SkipLog("activation_matched"))

    def activations_of(fact_id: str) -> torch.Tensor | None:
        return mean_answer_activations(adapter, prompts, [fact_id]) if fact_id in prompts.facts else None

    return _table("activation-matched", refined, adapter.n_neurons, seed, activations_of)


def control_table(kind: str, adapter: ModelAdapter, refined: pd.DataFrame, facts: Iterable[Mapping],
                  relations: Mapping[str, Relation], seed: int = 0) -> pd.DataFrame:
    """The control ``kind`` (one of ``CONTROLS``) of a refined table."""
    if kind == "random-layer":
        return layer_matched(refined, adapter.n_neurons, seed)
    if kind == "activation-matched":
        return activation_matched(adapter, refined, facts, relations, seed)
    raise ValueError(f"unknown control {kind!r}; expected one of {', '.join(CONTROLS)}")
