"""From attribution scores to knowledge neurons (Dai et al. 2022, sections 3.3 and 4.1).

1. Coarse set, per prompt: the neurons whose score exceeds t times the prompt's maximum score
   (t = 0.2 for integrated gradients; the official script uses t = 0.5 for the activation baseline).
2. Refined set, per fact: the neurons found in the coarse sets of a share p of the fact's prompts.
3. p is chosen per relation: it starts at 0.7 and moves by 0.05 until the relation's average number of
   knowledge neurons per fact lies in [2, 5].

The paper's text leaves steps 2-3 open at the edges; the official ``2_get_kn.py`` (Hunter-DDM/
knowledge-neurons @ 922dfd9), whose numbers are the paper's, fixes them. Two *share rules*:

* ``"official"`` (the default): a neuron is kept when its count c over the fact's n prompts satisfies
  c >= max(p n, 3), so a fact with fewer than 3 usable prompts has no knowledge neurons; p is evaluated
  at most 6 times (0.7, then moved by 0.05 after each evaluation, so p stays within [0.45, 0.95]) and
  the last evaluation is kept;
* ``"paper"`` (the text's reading): kept when c > p n ("shared by more than p% of the prompts"); p moves
  until the mean count lies in [2, 5], stops when it jumps over the interval (the nearer side is kept)
  or reaches 0 or 1.

Under both, the search never ends on an outcome with no knowledge neuron at all when it saw one with
some (at p = 1 the paper's rule keeps nothing, which is not what "moves until 2-5 remain" asks for).

Neurons are ``(layer, index)`` pairs throughout.
"""

from __future__ import annotations

import numbers
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping, Sequence

import torch

Neuron = tuple[int, int]
ShareRule = Literal["official", "paper"]
SHARE_RULES: tuple[str, ...] = ("official", "paper")
OFFICIAL_MIN_COUNT = 3  # 2_get_kn.py: parse_kn(..., min_threshold=3)
OFFICIAL_MAX_EVALUATIONS = 6  # 2_get_kn.py: for max_it in range(6)


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


def _check_rule(rule: str) -> None:
    if rule not in SHARE_RULES:
        raise ValueError(f"unknown share rule {rule!r} (use {' or '.join(map(repr, SHARE_RULES))})")


def refine_fact(
    coarse_sets: Sequence[set[Neuron]], p: float, rule: ShareRule = "official", min_count: int = OFFICIAL_MIN_COUNT
) -> set[Neuron]:
    r"""The fact's refined knowledge neurons among the coarse sets of its n prompts, by count c:

        official:  c >= max(p n, min_count)      (2_get_kn.py, ``parse_kn``; min_count = 3)
        paper:     c >  p n                       ("shared by more than p% of the prompts")

    The official rule compares in the script's floats, with p as the search accumulated it
    (``official_p_sequence``): 0.7 * 10 = 7.000000000000001, so at that exact boundary a neuron in 7 of
    10 prompts is dropped, as in the paper's numbers. The paper's rule compares in exact hundredths of p."""
    _check_rule(rule)
    n = len(coarse_sets)
    counts = Counter(neuron for s in coarse_sets for neuron in s)
    if rule == "paper":
        p_hundredths = round(p * 100)
        return {neuron for neuron, c in counts.items() if c * 100 > p_hundredths * n}
    threshold = max(n * p, min_count)  # parse_kn: mode_threshold = max(tot_num * mode_ratio, min_threshold)
    return {neuron for neuron, c in counts.items() if c >= threshold}


def official_p_sequence(start: float = 0.7, step: float = 0.05, moves: Sequence[int] = ()) -> list[float]:
    """The p values ``2_get_kn.py`` evaluates, accumulated in floats as its ``mode_ratio_bag -= 0.05`` /
    ``+= 0.05`` do (0.7 - 0.05 = 0.6499999999999999): ``moves`` are the directions (+1 / -1) taken."""
    out = [start]
    for move in moves:
        out.append(out[-1] + step if move > 0 else out[-1] - step)
    return out


@dataclass
class ThresholdSearch:
    """The outcome of the adaptive choice of p for one relation."""

    p: float
    mean_count: float
    converged: bool  # True when mean_count lies in [low, high]
    # "in range"; official: "6 evaluations"; paper: "overshoot", "p reached 0", "p reached 1";
    # both: "non-empty kept" (the search's own end had no neuron at all), "no facts"
    reason: str
    trace: list[tuple[float, float]] = field(default_factory=list)  # (p, mean count) visited, in order


def mean_refined_count(
    facts: Mapping[str, Sequence[set[Neuron]]], p: float, rule: ShareRule = "official", min_count: int = OFFICIAL_MIN_COUNT
) -> float:
    """Average number of refined neurons per fact, over facts with at least one usable prompt (a fact
    with too few prompts for the official rule counts as 0, as in 2_get_kn.py's ``ave_kn_num``)."""
    usable = [sets for sets in facts.values() if len(sets) > 0]
    return sum(len(refine_fact(sets, p, rule, min_count)) for sets in usable) / len(usable)


def adaptive_share_threshold(
    facts: Mapping[str, Sequence[set[Neuron]]],
    start: float = 0.7,
    step: float = 0.05,
    low: float = 2.0,
    high: float = 5.0,
    rule: ShareRule = "official",
    max_evaluations: int = OFFICIAL_MAX_EVALUATIONS,
    min_count: int = OFFICIAL_MIN_COUNT,
) -> ThresholdSearch:
    """Choose p for a relation: start at 0.7, move by 0.05 until the mean KN count is in [2, 5].

    The count falls as p rises, so p goes up while the mean is above ``high`` and down while below
    ``low``. ``rule="official"`` (2_get_kn.py): at most ``max_evaluations`` evaluations, the last one is
    kept (so p stays within start +- (max_evaluations - 1) * step). ``rule="paper"``: no limit; overshoot
    (the interval lies between two neighbouring p) keeps the p whose mean is nearer the interval (the
    first on a tie); p stops at 0 or 1. Under both rules, when the chosen outcome has no knowledge
    neuron in any fact but an earlier one had some, the non-empty outcome nearest the interval (the
    latest on a tie) is kept instead (``reason="non-empty kept"``). A relation with no usable fact has
    nothing to refine: ``p=start``, ``reason="no facts"``.
    """
    _check_rule(rule)
    if step <= 0:
        raise ValueError(f"p step must be > 0, got {step}")
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, numbers.Integral) or max_evaluations < 1:
        raise ValueError(f"max_evaluations must be an integer >= 1, got {max_evaluations!r}")
    if not any(len(s) for s in facts.values()):
        return ThresholdSearch(start, 0.0, False, "no facts")
    k = round(start / step)  # p = k * step, exact on the grid
    n_steps = round(1 / step)
    trace: list[tuple[float, float]] = []
    direction = 0
    official_p = start
    while True:
        p = official_p if rule == "official" else round(k * step, 10)
        mean = mean_refined_count(facts, p, rule, min_count)
        trace.append((p, mean))
        if low <= mean <= high:
            return ThresholdSearch(p, mean, True, "in range", trace)
        want = 1 if mean > high else -1
        if rule == "official":
            if len(trace) == max_evaluations:
                return _non_empty(ThresholdSearch(p, mean, False, f"{max_evaluations} evaluations", trace), low, high)
            official_p = official_p + step if want > 0 else official_p - step  # the script's float arithmetic
            k += want
            continue
        if direction and want != direction:  # jumped over the interval
            (p0, m0), (p1, m1) = trace[-2], trace[-1]
            best = (p0, m0) if _distance(m0, low, high) <= _distance(m1, low, high) else (p1, m1)
            return _non_empty(ThresholdSearch(best[0], best[1], False, "overshoot", trace), low, high)
        direction = want
        if (k == n_steps and want > 0) or (k == 0 and want < 0):
            return _non_empty(ThresholdSearch(p, mean, False, f"p reached {int(k == n_steps)}", trace), low, high)
        k += want


def _distance(x: float, low: float, high: float) -> float:
    return max(low - x, 0.0, x - high)


def _non_empty(search: ThresholdSearch, low: float, high: float) -> ThresholdSearch:
    """Never end on "no knowledge neuron in any fact" when an evaluated p gave some."""
    if search.mean_count > 0:
        return search
    seen = [(i, p, m) for i, (p, m) in enumerate(search.trace) if m > 0]
    if not seen:
        return search
    _, p, m = min(seen, key=lambda item: (_distance(item[2], low, high), -item[0]))
    return ThresholdSearch(p, m, False, "non-empty kept", search.trace)


def refine_relation(
    facts: Mapping[str, Sequence[set[Neuron]]], rule: ShareRule = "official", **search: float
) -> tuple[dict[str, set[Neuron]], ThresholdSearch]:
    """Refined knowledge neurons of every fact of one relation, with the relation's chosen p."""
    chosen = adaptive_share_threshold(facts, rule=rule, **search)
    min_count = int(search.get("min_count", OFFICIAL_MIN_COUNT))
    return {fact: refine_fact(sets, chosen.p, rule, min_count) for fact, sets in facts.items()}, chosen


def group_by_fact(rows: Iterable[tuple[str, str, set[Neuron]]]) -> dict[str, dict[str, list[set[Neuron]]]]:
    """(relation, fact, coarse set) rows -> {relation: {fact: [coarse sets]}}."""
    out: dict[str, dict[str, list[set[Neuron]]]] = {}
    for relation, fact, coarse in rows:
        out.setdefault(relation, {}).setdefault(fact, []).append(coarse)
    return out
