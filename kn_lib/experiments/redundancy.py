"""Two nulls against knowledge neurons: neurons common to many facts, and degenerate (redundant) sets.

**Common neurons.** If the same neuron is a "knowledge neuron" of a large share of all facts, it is
more likely a routing or general-purpose unit than a store of any one fact (Balogh, arXiv 2604.04756,
finds GPT-2's knowledge neurons act as routing; QRNCA, arXiv 2406.10868, filters such "common
neurons" before reading its results). For a refined table with F distinct facts and R distinct
relations, a neuron n found in the sets of facts F_n (relations R_n) has

    share_facts(n) = |F_n| / F,      share_relations(n) = |R_n| / R,

and is *common* when share_facts(n) > max_share (strict; default max_share = 0.05). Experiments rerun
without common neurons (``without_common``) test whether an effect survives their removal.

**Degenerate knowledge neurons** (Chen et al., AAAI 2024; ACL 2025). A fact's neuron set is
degenerate when it splits into parts that each can be removed with little effect, while removing all
of them changes much: redundancy, not absence, would then explain a small single-part effect. With
acc the top-1 accuracy over the fact's prompts and parts A, B (a seeded random split into halves),

    drop(S) = acc(unchanged) - acc(S zeroed),      S in {A, B, A u B},
    degenerate  <=>  drop(A) < 0.05  and  drop(B) < 0.05  and  drop(A u B) > 0.3

(their thresholds; both inequalities strict). ``degenerate_test`` is agnostic to where the neurons
come from, so a matched control set (``controls``) can be tested the same way.
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterable, Sequence

import pandas as pd

from ..adapters import ModelAdapter
from ..refine import Neuron
from .evaluation import Prompt, answer_distributions
from .interventions import scaled_activations
from .neuron_sets import check_refined

RECURRENCE_COLUMNS = ["layer", "neuron", "n_facts", "share_facts", "n_relations", "share_relations"]
DEGENERATE_COLUMNS = ["fact_id", "relation", "template_id", "part", "n_neurons", "p_before", "p_after",
                      "correct_before", "correct_after"]
SUMMARY_COLUMNS = ["fact_id", "relation", "n_prompts", "n_neurons", "accuracy_before", "drop_A", "drop_B",
                   "drop_both", "degenerate"]
PARTS = ("A", "B", "both")
# zeroing factor per batch row (unchanged, A zeroed, B zeroed, both zeroed), for the neurons of A and of B
_FACTORS_A = (1.0, 0.0, 1.0, 0.0)
_FACTORS_B = (1.0, 1.0, 0.0, 0.0)


# --- common neurons ----------------------------------------------------------------------------------


def _pairs(refined: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (fact, neuron): a neuron listed twice for a fact still counts once."""
    check_refined(refined)
    pairs = refined[["fact_id", "relation", "layer", "neuron"]].drop_duplicates(["fact_id", "layer", "neuron"])
    return pairs.astype({"layer": "int64", "neuron": "int64"})


def neuron_recurrence(refined: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, neuron): in how many facts (and relations) it is a knowledge neuron, and which share of
    the table's facts (relations) that is; most recurrent first, ties by (layer, neuron)."""
    pairs = _pairs(refined)
    if pairs.empty:
        dtypes = {c: "float64" if c.startswith("share") else "int64" for c in RECURRENCE_COLUMNS}
        return pd.DataFrame(columns=RECURRENCE_COLUMNS).astype(dtypes)
    n_facts, n_relations = pairs["fact_id"].nunique(), pairs["relation"].nunique()
    out = pairs.groupby(["layer", "neuron"]).agg(n_facts=("fact_id", "nunique"), n_relations=("relation", "nunique")).reset_index()
    out["share_facts"] = out["n_facts"] / n_facts
    out["share_relations"] = out["n_relations"] / n_relations
    out = out.sort_values(["n_facts", "layer", "neuron"], ascending=[False, True, True], kind="mergesort")
    return out[RECURRENCE_COLUMNS].reset_index(drop=True)


def common_neurons(refined: pd.DataFrame, max_share: float = 0.05) -> set[Neuron]:
    """Neurons that are knowledge neurons of *more* than ``max_share`` of the table's facts."""
    rec = neuron_recurrence(refined)
    rec = rec[rec["share_facts"] > max_share]
    return {(int(layer), int(neuron)) for layer, neuron in zip(rec["layer"], rec["neuron"])}


def _is_common(refined: pd.DataFrame, common: Iterable[Neuron]) -> pd.Series:
    common = {(int(layer), int(neuron)) for layer, neuron in common}
    keys = zip(refined["layer"].astype("int64"), refined["neuron"].astype("int64"))
    return pd.Series([k in common for k in keys], index=refined.index, dtype=bool)


def without_common(refined: pd.DataFrame, common: Iterable[Neuron]) -> pd.DataFrame:
    """The refined table without the rows of the given neurons (same columns, index reset); a fact whose
    neurons were all common has no row left, as a fact the search found nothing for."""
    check_refined(refined)
    return refined[~_is_common(refined, common)].reset_index(drop=True)


def common_summary(refined: pd.DataFrame, max_share: float = 0.05) -> dict:
    """How much of a refined table the common neurons are: of its distinct neurons, of its (fact, neuron)
    pairs, and the share of facts that filtering them would leave with no knowledge neuron."""
    pairs = _pairs(refined)
    common = common_neurons(refined, max_share)
    is_common = _is_common(pairs, common)
    n_facts = pairs["fact_id"].nunique()
    n_neurons = len(pairs[["layer", "neuron"]].drop_duplicates())
    kept = pairs.loc[~is_common, "fact_id"].nunique()
    nan = float("nan")
    return {
        "max_share": max_share,
        "n_facts": n_facts,
        "n_neurons": n_neurons,
        "n_common": len(common),
        "share_neurons_common": len(common) / n_neurons if n_neurons else nan,
        "share_rows_common": float(is_common.mean()) if len(pairs) else nan,
        "share_facts_emptied": (n_facts - kept) / n_facts if n_facts else nan,
    }


# --- degenerate knowledge neurons ----------------------------------------------------------------------


def split_halves(neurons: Sequence[Neuron], rng: random.Random) -> tuple[list[Neuron], list[Neuron]]:
    """A random split of a neuron set into halves A (floor(n/2) neurons) and B (the ceil(n/2) others),
    each sorted. The set is sorted before shuffling, so the split depends on the set and ``rng`` only,
    not on the order the neurons were listed in."""
    unique = sorted({(int(layer), int(neuron)) for layer, neuron in neurons})
    if len(unique) < 2:
        raise ValueError(f"a split into two non-empty halves needs at least 2 distinct neurons, got {len(unique)}")
    rng.shuffle(unique)
    half = len(unique) // 2
    return sorted(unique[:half]), sorted(unique[half:])


@contextlib.contextmanager
def _zeroed_per_row(adapter: ModelAdapter, a: Sequence[Neuron], b: Sequence[Neuron], pos: int):
    """Rows of a batch of 4: unchanged, A zeroed, B zeroed, both zeroed. Two ``scaled_activations`` hooks,
    one per half with its own per-row factors; A and B are disjoint, so where both sit in one layer the
    chained hooks write different indices."""
    with scaled_activations(adapter, a, pos, _FACTORS_A), scaled_activations(adapter, b, pos, _FACTORS_B):
        yield


def degenerate_test(adapter: ModelAdapter, prompts: Sequence[Prompt], neurons: Sequence[Neuron],
                    rng: random.Random) -> list[dict]:
    """Zero half A, half B, and both, of one fact's neuron set on each of its prompts, and record p(answer)
    and whether the top-1 token is the answer, before and after (rows in ``DEGENERATE_COLUMNS``).

    The split is drawn once per fact (from ``rng``), so every prompt sees the same halves. One forward
    pass of 4 copies per prompt gives the four conditions (equal to separate passes up to float rounding).
    """
    a, b = split_halves(neurons, rng)
    if len({p.fact_id for p in prompts}) > 1:
        raise ValueError(f"prompts of one fact expected, got facts {sorted({p.fact_id for p in prompts})}")
    sizes = {"A": len(a), "B": len(b), "both": len(a) + len(b)}
    rows = []
    for prompt in prompts:
        target = prompt.encoded.target_id
        with _zeroed_per_row(adapter, a, b, prompt.encoded.answer_pos):
            dists = answer_distributions(adapter, prompt.encoded, len(_FACTORS_A))  # [4, vocab]
        p_before, correct_before = float(dists[0, target]), int(dists[0].argmax()) == target
        for part, after in zip(PARTS, dists[1:]):
            rows.append({"fact_id": prompt.fact_id, "relation": prompt.relation, "template_id": prompt.template_id,
                         "part": part, "n_neurons": sizes[part], "p_before": p_before, "p_after": float(after[target]),
                         "correct_before": correct_before, "correct_after": int(after.argmax()) == target})
    return rows


def degenerate_summary(rows: pd.DataFrame, alone: float = 0.05, together: float = 0.3) -> pd.DataFrame:
    """Per fact: accuracy before, the accuracy drop when zeroing A, B and both, and whether the fact is
    degenerate (drop_A < alone, drop_B < alone, drop_both > together; module docstring).

    A drop is the mean over prompts of (correct before - correct after), which equals the difference of
    the two accuracies but is exact in floats for k lost prompts of n (k / n), so a drop at a threshold
    compares as the threshold itself."""
    missing = [c for c in DEGENERATE_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"rows lack columns {missing} (expected degenerate_test's rows)")
    if rows.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    frame = rows.assign(lost=rows["correct_before"].astype(int) - rows["correct_after"].astype(int))
    out = []
    for fact_id, g in frame.groupby("fact_id", sort=True):
        drops = {}
        for part in PARTS:
            sel = g[g["part"] == part]
            drops[f"drop_{part}"] = float(sel["lost"].mean()) if len(sel) else float("nan")
        before = g.drop_duplicates("template_id")
        both = g[g["part"] == "both"]
        out.append({
            "fact_id": fact_id, "relation": g["relation"].iloc[0], "n_prompts": len(before),
            "n_neurons": int(both["n_neurons"].iloc[0]) if len(both) else int(g["n_neurons"].max()),
            "accuracy_before": float(before["correct_before"].astype(float).mean()), **drops,
            # nan compares False: a fact missing a part is never called degenerate
            "degenerate": bool(drops["drop_A"] < alone and drops["drop_B"] < alone and drops["drop_both"] > together),
        })
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)
