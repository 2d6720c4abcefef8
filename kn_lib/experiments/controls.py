"""Matched controls: neuron sets that look like a fact's knowledge neurons but are not them.

The paper compares knowledge neurons only with its activation baseline, and a uniform random draw is a
weak control: knowledge neurons sit in the top layers, where any neuron may matter more. Each control
here replaces every knowledge neuron by one non-knowledge neuron *of the same layer*, so an effect that
survives "KN minus control" is not explained by which layers were touched:

* ``random-layer`` (``layer_matched``): a uniformly random neuron of the layer, seeded per fact;
* ``activation-matched`` (``activation_matched``): the neuron of the layer whose activation at the answer
  position, averaged over the fact's prompts, is closest in magnitude to the knowledge neuron's, so the
  control also removes (or doubles, or rewrites) as much signal.

Those two only avoid the fact's *own* knowledge neurons, so a control neuron can be another fact's
knowledge neuron (a reviewer found 41% of the activation-matched neurons of an update run were), and a
magnitude match pairs a neuron firing at +2 with one at -2, whose value-slot edits act in opposite
directions. The **non-KN** controls (``NON_KN_CONTROLS``) fix both: ``random-layer-non-kn`` draws as
``random-layer`` but from neurons that are no knowledge neuron of *any* fact of the sample, and
``activation-matched-non-kn`` matches the *signed* activation, from the same pool. They are the
controls the verdicts use; the first two stay, as committed, for comparison (``kn_overlap`` measures
how often a control is a knowledge neuron).

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

CONTROLS = ("random-layer", "activation-matched")  # avoid the fact's own knowledge neurons only
NON_KN_CONTROLS = ("random-layer-non-kn", "activation-matched-non-kn")  # avoid every KN of the sample; signed match
ALL_CONTROLS = CONTROLS + NON_KN_CONTROLS


def base_kind(kind: str) -> tuple[str, bool]:
    """(``random-layer`` or ``activation-matched``, whether ``kind`` is its non-KN form)."""
    if kind in CONTROLS:
        return kind, False
    if kind in NON_KN_CONTROLS:
        return kind.removesuffix("-non-kn"), True
    raise ValueError(f"unknown control {kind!r}; expected one of {', '.join(ALL_CONTROLS)}")


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
                               exclude: Iterable[Neuron] = (), signed: bool = False) -> list[Neuron]:
    """For each neuron (layer, i), the neuron (layer, j) whose mean activation magnitude |a[layer, j]| is
    closest to |a[layer, i]| (``signed``: whose a[layer, j] is closest to a[layer, i], so that a scaled or
    edited control pushes the same way), j not in ``exclude``, not a neuron of the set and not chosen
    before (ties to the lower j). ``activations``: [n_layers, n_neurons], the mean at the answer position
    over the fact's prompts (or one prompt's)."""
    taken = set(map(tuple, neurons)) | set(map(tuple, exclude))
    out = []
    for layer, index in neurons:
        magnitude = activations[layer].double() if signed else activations[layer].abs().double()
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
                    rng: Callable[[], random.Random], activations: Callable[[], torch.Tensor],
                    sample_kns: Iterable[Neuron] = ()) -> list[Neuron]:
    """The control ``kind`` (one of ``ALL_CONTROLS``) of ``neurons``, none of them in ``exclude``: a random
    same-layer neuron drawn from ``rng()`` (``layer_matched_neurons``), or the same-layer neuron closest
    in mean activation ``activations()`` (``activation_matched_neurons``). A non-KN kind also avoids
    ``sample_kns`` (every knowledge neuron of the sample) and matches the signed activation. Each argument
    is called only by the control that needs it, so the other costs nothing (no forward pass, no draw)."""
    base, non_kn = base_kind(kind)
    if non_kn:
        exclude = set(map(tuple, exclude)) | set(map(tuple, sample_kns))
    if base == "random-layer":
        return layer_matched_neurons(neurons, n_neurons, rng(), exclude)
    return activation_matched_neurons(neurons, activations(), exclude, signed=non_kn)


def kn_overlap(controls: pd.DataFrame, refined: pd.DataFrame) -> dict[str, int]:
    """How many of a control table's neurons (rows: fact_id, relation, layer, neuron) are knowledge neurons
    of some fact of ``refined`` (``any``) and of a fact of the same relation (``same_relation``), of
    ``n`` control neurons: a control that is itself a knowledge neuron is no control."""
    kn_rel = set(zip(refined["relation"], refined["layer"].astype(int), refined["neuron"].astype(int)))
    kn = {(l, n) for _, l, n in kn_rel}
    pairs = list(zip(controls["relation"], controls["layer"].astype(int), controls["neuron"].astype(int)))
    return {"n": len(pairs), "any": sum((l, n) in kn for _, l, n in pairs),
            "same_relation": sum(t in kn_rel for t in pairs)}


def _table(kind: str, refined: pd.DataFrame, n_neurons: int, seed: int,
           activations_of: Callable[[str], torch.Tensor | None], avoid: Iterable[Neuron] = ()) -> pd.DataFrame:
    """``kind``'s control of each fact of a refined table (``matched_neurons``; the random draw seeded by
    ``seeded_rng(seed, "random-layer/<fact>")``, so a fact's control does not depend on the run's other
    facts). A fact whose activations are None (no usable prompt) keeps no control neuron."""
    check_refined(refined)
    relation, rows = relation_of(refined), []
    base, _ = base_kind(kind)
    sample_kns = set(zip(refined["layer"].astype(int), refined["neuron"].astype(int))) | set(map(tuple, avoid))
    for fact_id, kns in neurons_by_fact(refined).items():
        acts = activations_of(fact_id) if base == "activation-matched" else None
        if base == "activation-matched" and acts is None:
            continue
        chosen = matched_neurons(kind, kns, n_neurons, (), lambda: seeded_rng(seed, f"random-layer/{fact_id}"), lambda: acts,
                                 sample_kns)
        rows += [{"fact_id": fact_id, "relation": relation[fact_id], "layer": layer, "neuron": neuron} for layer, neuron in chosen]
    frame = pd.DataFrame(rows, columns=list(REFINED_COLUMNS))
    frame["model"] = refined["model"].iloc[0] if "model" in refined.columns and len(refined) else "?"
    frame["method"], frame["seed"] = kind, seed
    return frame


def layer_matched(refined: pd.DataFrame, n_neurons: int, seed: int = 0, kind: str = "random-layer",
                  avoid: Iterable[Neuron] = ()) -> pd.DataFrame:
    """The ``random-layer`` control of a refined table: per fact, one random same-layer neuron per knowledge
    neuron, drawn from ``seeded_rng(seed, "random-layer/<fact>")`` (``random-layer-non-kn``: from the neurons
    that are no knowledge neuron of the table)."""
    return _table(kind, refined, n_neurons, seed, lambda fact_id: None, avoid)


def activation_matched(adapter: ModelAdapter, refined: pd.DataFrame, facts: Iterable[Mapping],
                       relations: Mapping[str, Relation], seed: int = 0, kind: str = "activation-matched",
                       avoid: Iterable[Neuron] = ()) -> pd.DataFrame:
    """The ``activation-matched`` control of a refined table: per fact, for each knowledge neuron the
    same-layer neuron closest in mean activation magnitude over the fact's prompts. A fact without usable
    prompts keeps no control neuron (and is skipped by the experiment as for its knowledge neurons).
    ``seed`` is only recorded (the match is deterministic)."""
    prompts = FactPrompts(adapter, facts, relations, SkipLog("activation_matched"))

    def activations_of(fact_id: str) -> torch.Tensor | None:
        return mean_answer_activations(adapter, prompts, [fact_id]) if fact_id in prompts.facts else None

    return _table(kind, refined, adapter.n_neurons, seed, activations_of, avoid)


def control_table(kind: str, adapter: ModelAdapter, refined: pd.DataFrame, facts: Iterable[Mapping],
                  relations: Mapping[str, Relation], seed: int = 0, avoid: Iterable[Neuron] = ()) -> pd.DataFrame:
    """The control ``kind`` (one of ``ALL_CONTROLS``) of a refined table. A non-KN control avoids every neuron
    of the table and of ``avoid`` (the knowledge neurons of facts outside the table, e.g. other relations')."""
    base, _ = base_kind(kind)
    if base == "random-layer":
        return layer_matched(refined, adapter.n_neurons, seed, kind, avoid)
    return activation_matched(adapter, refined, facts, relations, seed, kind, avoid)
