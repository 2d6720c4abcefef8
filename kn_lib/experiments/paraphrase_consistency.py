"""Are a fact's neurons the same across its paraphrases? (Beyond the paper; the question of "Knowledge
Localization: Mission Not Accomplished?", ICLR 2025.)

The paper's refinement keeps the neurons shared by more than p % of a fact's prompts, which assumes the
prompts mostly agree. Here, per fact, how much they do:

* ``mean_jaccard``: the mean over pairs of the fact's usable prompts of |A ∩ B| / |A ∪ B| of their
  coarse sets (``pairwise_jaccard``; a pair of two empty sets is left out);
* ``n_shared``: neurons in the coarse sets of at least two prompts; ``shares_none`` flags a fact whose
  prompts share no neuron at all (no pair overlaps), so that no threshold p could give it a neuron
  common to its paraphrases;
* per refined neuron, the share of the fact's prompts whose coarse set holds it (``by_neuron``).

Inputs are the ``attribute`` stage's tables: ``coarse`` rows already cut at the coarse threshold (one per
prompt and neuron) and ``prompts`` (every usable prompt, so a prompt without any coarse neuron counts as
an empty set), and ``refine``'s ``refined``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import pandas as pd

from ..refine import Neuron


@dataclass
class ConsistencyResult:
    by_fact: pd.DataFrame  # one row per fact: prompts, mean Jaccard, shared neurons, refined neurons
    by_neuron: pd.DataFrame  # one row per refined neuron: the share of the fact's prompts holding it


def jaccard(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B|; NaN for two empty sets (nothing to agree or disagree on)."""
    union = len(a | b)
    return len(a & b) / union if union else float("nan")


def pairwise_jaccard(sets: Sequence[set]) -> float:
    r"""The mean Jaccard overlap over the pairs of a fact's prompts,

        J = mean_{i < j} |C_i ∩ C_j| / |C_i ∪ C_j|,

    over the pairs where the union is not empty (NaN with fewer than two prompts or no such pair)."""
    values = [v for a, b in combinations(sets, 2) if (v := jaccard(set(a), set(b))) == v]
    return sum(values) / len(values) if values else float("nan")


def _sets(coarse: pd.DataFrame, prompts: pd.DataFrame) -> dict[str, dict[int, set[Neuron]]]:
    out: dict[str, dict[int, set[Neuron]]] = {}
    for f, t in zip(prompts["fact_id"], prompts["template_id"]):
        out.setdefault(f, {})[int(t)] = set()
    for f, t, layer, neuron in zip(coarse["fact_id"], coarse["template_id"], coarse["layer"], coarse["neuron"]):
        if f in out and int(t) in out[f]:
            out[f][int(t)].add((int(layer), int(neuron)))
    return out


def paraphrase_consistency(coarse: pd.DataFrame, prompts: pd.DataFrame, refined: pd.DataFrame) -> ConsistencyResult:
    """Per fact and per refined neuron, how far the fact's prompts agree (module docstring)."""
    for name, frame, needed in (("coarse", coarse, ("fact_id", "template_id", "layer", "neuron")),
                                ("prompts", prompts, ("fact_id", "relation", "template_id")),
                                ("refined", refined, ("fact_id", "layer", "neuron"))):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} table lacks columns {missing}")
    sets = _sets(coarse, prompts)
    relation = dict(zip(prompts["fact_id"], prompts["relation"]))
    kns: dict[str, list[Neuron]] = {}
    for f, layer, neuron in zip(refined["fact_id"], refined["layer"], refined["neuron"]):
        kns.setdefault(f, []).append((int(layer), int(neuron)))
    fact_rows, neuron_rows = [], []
    for fact_id, by_template in sets.items():
        per_prompt = list(by_template.values())
        counts: dict[Neuron, int] = {}
        for s in per_prompt:
            for n in s:
                counts[n] = counts.get(n, 0) + 1
        n_prompts = len(per_prompt)
        fact_rows.append({
            "fact_id": fact_id, "relation": relation[fact_id], "n_prompts": n_prompts,
            "mean_coarse": sum(map(len, per_prompt)) / n_prompts, "mean_jaccard": pairwise_jaccard(per_prompt),
            "n_shared": sum(c >= 2 for c in counts.values()), "n_in_all": sum(c == n_prompts for c in counts.values()),
            "shares_none": n_prompts >= 2 and not any(c >= 2 for c in counts.values()),
            "n_refined": len(kns.get(fact_id, ())),
        })
        for layer, neuron in kns.get(fact_id, ()):
            held = counts.get((layer, neuron), 0)
            neuron_rows.append({"fact_id": fact_id, "relation": relation[fact_id], "layer": layer, "neuron": neuron,
                                "n_prompts": n_prompts, "n_holding": held, "share": held / n_prompts})
    by_fact = pd.DataFrame(fact_rows, columns=["fact_id", "relation", "n_prompts", "mean_coarse", "mean_jaccard", "n_shared",
                                               "n_in_all", "shares_none", "n_refined"])
    by_neuron = pd.DataFrame(neuron_rows, columns=["fact_id", "relation", "layer", "neuron", "n_prompts", "n_holding", "share"])
    return ConsistencyResult(by_fact, by_neuron)
