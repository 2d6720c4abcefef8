"""Held-out prompts: knowledge neurons chosen on half of a fact's prompts, tested on the other half.

The paper chooses a fact's knowledge neurons by integrated gradients on its prompts and then suppresses
and amplifies them *on those same prompts* (section 4.5): the neurons are selected on the outcome they
are then said to control. A reviewer's first objection. Here each fact's usable prompts are split, by a
seeded draw per fact (``split_templates``), into a **selection** half and a **held-out** half; the
refinement (the official rule and its adaptive p, per relation) sees only the selection half's coarse
neurons (``refine_on_selection``), and suppress/amplify is measured on every prompt, each row tagged
with its half (``tag_halves``), so one run gives the in-sample and the held-out effect of the same
neurons. A claim that survives only in-sample is selection, not knowledge.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd

from ..refine import Neuron
from .evaluation import seeded_rng

HALVES = ("selection", "held-out")


def split_templates(fact_id: str, template_ids: Iterable[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """A fact's prompts (template ids) split into (selection, held-out) halves by a seeded shuffle of the
    fact's own (``seeded_rng(seed, "held-out/<fact>")``, so a fact's split does not depend on the run's other
    facts); the selection half takes the extra prompt of an odd count. Both sorted."""
    ids = sorted({int(t) for t in template_ids})
    rng = seeded_rng(seed, f"held-out/{fact_id}")
    shuffled = ids[:]
    rng.shuffle(shuffled)
    cut = (len(ids) + 1) // 2
    return sorted(shuffled[:cut]), sorted(shuffled[cut:])


def splits(prompts: pd.DataFrame, seed: int = 0) -> dict[str, tuple[list[int], list[int]]]:
    """``split_templates`` of every fact of a prompt table (fact_id, template_id: the usable prompts)."""
    return {f: split_templates(f, rows["template_id"], seed) for f, rows in prompts.groupby("fact_id", sort=True)}


def selection_sets(coarse_by_prompt: Mapping[str, Mapping[int, set[Neuron]]],
                   split: Mapping[str, tuple[list[int], list[int]]]) -> dict[str, list[set[Neuron]]]:
    """fact -> the coarse sets of its selection half's prompts only (``coarse_by_prompt``: fact -> template
    id -> coarse set, every usable prompt present, an empty set for one without coarse neurons)."""
    return {f: [coarse_by_prompt[f].get(t, set()) for t in split[f][0]] for f in coarse_by_prompt if f in split}


def tag_halves(table: pd.DataFrame, split: Mapping[str, tuple[list[int], list[int]]]) -> pd.DataFrame:
    """A suppress/amplify table (own prompts) with a ``half`` column: ``selection`` or ``held-out``, by the
    row's fact and template."""
    held = {(f, t) for f, (_, out) in split.items() for t in out}
    keys = zip(table["fact_id"], table["template_id"].astype(int))
    return table.assign(half=["held-out" if k in held else "selection" for k in keys])


def by_half(table: pd.DataFrame) -> pd.DataFrame:
    """Figures 4-5 per (relation, half, operation): the change ratio of ``suppress_amplify.change_ratio``
    over the half's prompts, facts without knowledge neurons counting with zero change (official)."""
    from .suppress_amplify import change_ratio

    rows = []
    for (relation, half, operation), g in table.groupby(["relation", "half", "operation"], sort=True):
        rows.append({"relation": relation, "half": half, "operation": operation, "n_facts": g["fact_id"].nunique(),
                     "n_facts_with_kn": g.loc[g["n_kn"] > 0, "fact_id"].nunique(), "n_prompts": len(g),
                     "change_ratio": change_ratio(g["p_before"], g["p_after"])})
    return pd.DataFrame(rows, columns=["relation", "half", "operation", "n_facts", "n_facts_with_kn", "n_prompts", "change_ratio"])
