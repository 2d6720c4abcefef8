"""Statistics of knowledge neurons (Dai et al. 2022, section 4.4: Figure 3 and Table 2).

* knowledge neurons per fact, averaged over facts (facts with none count as 0, as in the official
  ``2_analyze_kn.py``);
* layer distribution: the percentage of all knowledge neurons that sit in each layer (Figure 3);
* mean intersection size of the knowledge-neuron sets of fact pairs of the same relation (intra) and of
  different relations (inter) (Table 2).

Every searched fact takes part, with or without knowledge neurons (an empty set shares nothing), as
in the official ``2_analyze_kn.py``. Intra-relation pairs: all pairs of facts of a relation (when there
are more than ``max_pairs``, that many drawn uniformly with replacement, seeded). Inter-relation pairs
(``StatisticsConfig.inter_pairs``):

* ``"official"`` (default): per fact, ``partners_per_fact`` (100) partners, each drawn by choosing
  another relation uniformly, then a fact of it uniformly. This weights pairs towards small relations,
  so its mean is *not* the mean over all cross-relation pairs when relations differ in size;
* ``"uniform"`` (ours): all cross-relation pairs (or ``max_pairs`` of them drawn uniformly).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import pandas as pd

from ..refine import Neuron
from .evaluation import SkipLog, tag_of
from .neuron_sets import check_refined, neurons_by_fact


@dataclass(frozen=True)
class StatisticsConfig:
    max_pairs: int = 100_000  # intra pairs (and inter pairs under "uniform"); more than this are sampled
    seed: int = 0
    inter_pairs: Literal["official", "uniform"] = "official"  # how inter-relation partners are drawn
    partners_per_fact: int = 100  # official: 100 random partners per fact

    def __post_init__(self) -> None:
        if self.inter_pairs not in ("official", "uniform"):
            raise ValueError(f"inter_pairs must be 'official' or 'uniform', got {self.inter_pairs!r}")


@dataclass(frozen=True)
class StatisticsSummary:
    """Table 2's numbers for one neuron set, with what produced them."""

    model: str
    method: str
    n_facts: int
    n_relations: int
    mean_kn_per_fact: float  # paper: 4.13 (ours), 3.96 (baseline)
    mean_intra_intersection: float  # paper: 1.23 / 2.85
    mean_inter_intersection: float  # paper: 0.09 / 1.92
    n_intra_pairs: int
    n_inter_pairs: int
    pairs_sampled: bool
    seed: int


@dataclass
class StatisticsResult:
    table: pd.DataFrame  # one row per fact: fact_id, relation, n_kn
    layers: pd.DataFrame  # one row per layer: layer, n_kn, percent (Figure 3)
    pairs: pd.DataFrame  # one row per fact pair: kind, fact_a, fact_b, intersection
    summary: StatisticsSummary
    skipped: pd.DataFrame
    config: StatisticsConfig


def layer_percentages(refined: pd.DataFrame, n_layers: int | None = None) -> pd.DataFrame:
    r"""Figure 3: percent of knowledge neurons in layer l = 100 * |{KN in layer l}| / |{all KNs}|.

    Every layer 0..n_layers-1 gets a row (layers without neurons at 0 %)."""
    check_refined(refined)
    top = int(refined["layer"].max()) + 1 if len(refined) else 0
    n_layers = max(n_layers or 0, top)
    counts = refined["layer"].astype(int).value_counts().reindex(range(n_layers), fill_value=0)
    total = int(counts.sum())
    percent = counts / total * 100 if total else counts.astype(float)
    return pd.DataFrame({"layer": range(n_layers), "n_kn": counts.to_numpy(), "percent": percent.to_numpy()})


def intersection_sizes(pairs: Sequence[tuple[str, str]], kn_sets: Mapping[str, set[Neuron]]) -> list[int]:
    r"""Table 2: |KN(a) \cap KN(b)| for each fact pair (a, b); Table 2 reports their mean over intra- and
    inter-relation pairs. A fact without knowledge neurons has the empty set."""
    return [len(kn_sets.get(a, set()) & kn_sets.get(b, set())) for a, b in pairs]


def _intra_pairs(groups: list[list[str]], max_pairs: int, rng: random.Random) -> tuple[list[tuple[str, str]], bool]:
    sizes = [len(g) * (len(g) - 1) // 2 for g in groups]
    if sum(sizes) <= max_pairs:
        return [p for g in groups for p in itertools.combinations(g, 2)], False
    chosen = rng.choices(groups, weights=sizes, k=max_pairs)  # a relation with probability ∝ its pairs
    return [tuple(rng.sample(g, 2)) for g in chosen], True  # type: ignore[misc]


def _inter_pairs_official(groups: list[list[str]], partners: int, rng: random.Random) -> list[tuple[str, str]]:
    """2_analyze_kn.py: for every fact, ``partners`` draws of (another relation uniformly, then a fact of it)."""
    if len(groups) < 2:
        return []
    pairs = []
    for i, group in enumerate(groups):
        others = [g for j, g in enumerate(groups) if j != i]
        for fact in group:
            pairs += [(fact, rng.choice(rng.choice(others))) for _ in range(partners)]
    return pairs


def _inter_pairs(groups: list[list[str]], max_pairs: int, rng: random.Random) -> tuple[list[tuple[str, str]], bool]:
    n = sum(len(g) for g in groups)
    total = (n * n - sum(len(g) ** 2 for g in groups)) // 2
    if total <= max_pairs:
        return [(a, b) for g, h in itertools.combinations(groups, 2) for a in g for b in h], False
    labelled = [(f, i) for i, g in enumerate(groups) for f in g]
    pairs = []
    while len(pairs) < max_pairs:  # uniform over cross-relation pairs: draw two facts, reject same relation
        (a, ra), (b, rb) = rng.sample(labelled, 2)
        if ra != rb:
            pairs.append((a, b))
    return pairs, True


def neuron_statistics(
    refined: pd.DataFrame,
    facts: pd.DataFrame | None = None,
    n_layers: int | None = None,
    config: StatisticsConfig = StatisticsConfig(),
) -> StatisticsResult:
    """Figure 3 and Table 2 for one refined table (knowledge neurons, baseline or random).

    ``facts`` (columns fact_id, relation; e.g. ``KNResult.prompts``) names every fact that was searched,
    so that facts without knowledge neurons count as 0; without it only facts with neurons count.
    """
    check_refined(refined)
    skips = SkipLog("neuron_statistics")
    kn_sets = {f: set(ns) for f, ns in neurons_by_fact(refined).items()}
    fact_relation = dict(zip(refined["fact_id"], refined["relation"]))
    if facts is not None:
        fact_relation.update(dict(zip(facts["fact_id"], facts["relation"])))
    per_fact = pd.DataFrame(
        {"fact_id": list(fact_relation), "relation": list(fact_relation.values()),
         "n_kn": [len(kn_sets.get(f, ())) for f in fact_relation]}
    )
    for relation, rows in per_fact.groupby("relation", sort=False):
        if rows["n_kn"].sum() == 0:
            skips.add(f"relation without knowledge neurons ({len(rows)} facts, counted with 0)", relation)
    groups = [list(rows["fact_id"]) for _, rows in per_fact.groupby("relation", sort=True)]
    rng = random.Random(config.seed)
    intra, intra_sampled = _intra_pairs(groups, config.max_pairs, rng)
    if config.inter_pairs == "official":
        inter, inter_sampled = _inter_pairs_official(groups, config.partners_per_fact, rng), True
    else:
        inter, inter_sampled = _inter_pairs(groups, config.max_pairs, rng)
    if not intra:
        skips.add("no intra-relation fact pair (every relation has one fact)")
    if not inter:
        skips.add("no inter-relation fact pair (only one relation)")
    pairs = pd.DataFrame(
        [("intra", a, b) for a, b in intra] + [("inter", a, b) for a, b in inter], columns=["kind", "fact_a", "fact_b"]
    )
    pairs["intersection"] = intersection_sizes(list(zip(pairs["fact_a"], pairs["fact_b"])), kn_sets)
    means = pairs.groupby("kind")["intersection"].mean()
    tag = tag_of(refined)
    summary = StatisticsSummary(
        model=tag["model"], method=tag["method"], n_facts=len(per_fact), n_relations=len(groups),
        mean_kn_per_fact=float(per_fact["n_kn"].mean()) if len(per_fact) else float("nan"),
        mean_intra_intersection=float(means.get("intra", float("nan"))),
        mean_inter_intersection=float(means.get("inter", float("nan"))),
        n_intra_pairs=len(intra), n_inter_pairs=len(inter), pairs_sampled=intra_sampled or inter_sampled, seed=config.seed,
    )
    layers = layer_percentages(refined, n_layers)
    for frame in (per_fact, layers, pairs):
        frame["model"], frame["method"] = tag["model"], tag["method"]
    pairs["seed"] = config.seed
    return StatisticsResult(per_fact, layers, pairs, summary, skips.frame(), config)
