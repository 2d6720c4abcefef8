"""From attribution scores to knowledge neurons (Dai et al. 2022, sections 3.3 and 4.1).

1. Coarse set, per prompt: the neurons whose score exceeds t times the prompt's maximum score (t = 0.2).
2. Refined set, per fact: the neurons found in the coarse sets of more than a fraction p of the fact's
   prompts.
3. p is chosen per relation: it starts at 0.7 and moves by 0.05 until the relation's average number of
   knowledge neurons per fact lies in [2, 5].

Neurons are ``(layer, index)`` pairs throughout.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch

Neuron = tuple[int, int]


def coarse_neurons(scores: torch.Tensor, threshold: float = 0.2, layers: Sequence[int] | None = None) -> set[Neuron]:
    """Neurons with score > t * max(score) over all neurons of one prompt (paper: t = 0.2).

    ``scores`` is [n_layers, n_neurons]; ``layers`` names the model layer of each row (default 0..L-1).
    A prompt whose maximum score is not positive has no coarse neurons (every neuron would pass a
    threshold at or below zero, which says nothing about the fact).
    """
    top = scores.max()
    if not torch.isfinite(top) or top <= 0:
        return set()
    rows, cols = (scores > threshold * top).nonzero(as_tuple=True)
    names = list(range(scores.shape[0])) if layers is None else list(layers)
    return {(names[r], c) for r, c in zip(rows.tolist(), cols.tolist())}


def neuron_shares(coarse_sets: Sequence[set[Neuron]]) -> dict[Neuron, float]:
    """For each neuron, the fraction of the fact's prompts whose coarse set contains it."""
    if not coarse_sets:
        return {}
    counts = Counter(n for s in coarse_sets for n in s)
    return {n: c / len(coarse_sets) for n, c in counts.items()}


def refine_fact(coarse_sets: Sequence[set[Neuron]], p: float) -> set[Neuron]:
    """Neurons shared by *more than* a fraction p of the prompts (strict, as the paper says)."""
    n = len(coarse_sets)
    counts = Counter(neuron for s in coarse_sets for neuron in s)
    # integer comparison in hundredths avoids 0.7 * 10 = 7.000000000000001 style surprises
    p_hundredths = round(p * 100)
    return {neuron for neuron, c in counts.items() if c * 100 > p_hundredths * n}


@dataclass
class ThresholdSearch:
    """The outcome of the adaptive choice of p for one relation."""

    p: float
    mean_count: float
    converged: bool  # True when mean_count lies in [low, high]
    reason: str  # "in range", "overshoot", "p reached 0", "p reached 1", "no facts"
    trace: list[tuple[float, float]] = field(default_factory=list)  # (p, mean count) visited, in order


def mean_refined_count(facts: Mapping[str, Sequence[set[Neuron]]], p: float) -> float:
    """Average number of refined neurons per fact, over facts with at least one usable prompt."""
    usable = [sets for sets in facts.values() if len(sets) > 0]
    return sum(len(refine_fact(sets, p)) for sets in usable) / len(usable)


def adaptive_share_threshold(
    facts: Mapping[str, Sequence[set[Neuron]]],
    start: float = 0.7,
    step: float = 0.05,
    low: float = 2.0,
    high: float = 5.0,
) -> ThresholdSearch:
    """Choose p for a relation: start at 0.7, move by 0.05 until the mean KN count is in [2, 5].

    The paper gives the rule but not its edge cases; ours:

    * the count falls as p rises, so p goes up while the mean is above ``high`` and down while below
      ``low``;
    * overshoot (the interval lies between two neighbouring p): keep the p whose mean is nearer the
      interval (the first one on a tie), ``converged=False``;
    * p cannot go below 0 or above 1: stop at the bound, ``converged=False``; at p = 1 no neuron can be
      shared by more than all prompts, at p = 0 every neuron of any coarse set counts;
    * a relation with no usable fact has nothing to refine: ``p=start``, ``reason="no facts"``.
    """
    if not any(len(s) for s in facts.values()):
        return ThresholdSearch(start, 0.0, False, "no facts")
    k, k_step = round(start / step), 1  # p = k * step, exact on the grid
    n_steps = round(1 / step)
    trace: list[tuple[float, float]] = []
    direction = 0
    while True:
        p = round(k * step, 10)
        mean = mean_refined_count(facts, p)
        trace.append((p, mean))
        if low <= mean <= high:
            return ThresholdSearch(p, mean, True, "in range", trace)
        want = 1 if mean > high else -1
        if direction and want != direction:  # jumped over the interval
            (p0, m0), (p1, m1) = trace[-2], trace[-1]
            gap0, gap1 = _distance(m0, low, high), _distance(m1, low, high)
            best = (p0, m0) if gap0 <= gap1 else (p1, m1)
            return ThresholdSearch(best[0], best[1], False, "overshoot", trace)
        direction = want
        if (k == n_steps and want > 0) or (k == 0 and want < 0):
            return ThresholdSearch(p, mean, False, f"p reached {int(k == n_steps)}", trace)
        k += want * k_step


def _distance(x: float, low: float, high: float) -> float:
    return max(low - x, 0.0, x - high)


def refine_relation(
    facts: Mapping[str, Sequence[set[Neuron]]], **search: float
) -> tuple[dict[str, set[Neuron]], ThresholdSearch]:
    """Refined knowledge neurons of every fact of one relation, with the relation's chosen p."""
    chosen = adaptive_share_threshold(facts, **search)
    return {fact: refine_fact(sets, chosen.p) for fact, sets in facts.items()}, chosen


def group_by_fact(rows: Iterable[tuple[str, str, set[Neuron]]]) -> dict[str, dict[str, list[set[Neuron]]]]:
    """(relation, fact, coarse set) rows -> {relation: {fact: [coarse sets]}}."""
    out: dict[str, dict[str, list[set[Neuron]]]] = {}
    for relation, fact, coarse in rows:
        out.setdefault(relation, {}).setdefault(fact, []).append(coarse)
    return out
