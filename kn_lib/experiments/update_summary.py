"""Table 6's numbers from the tables ``update_facts`` measures: Delta PPL as the official script averages it
(and from log-probabilities, and its median over edits), and the ``UpdateSummary`` of each neuron set.

Apart from ``update_facts`` because the book recomputes these from stored tables (bootstrap intervals,
claims) without editing anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .evaluation import log_perplexity


@dataclass(frozen=True)
class UpdateSummary:
    """Table 6, one per neuron set."""

    model: str
    method: str
    neuron_set: str  # "knowledge", "random" (uniform over layers), "random-layer" or "activation-matched"
    n_edits: int
    change_rate: float  # paper: 48.5 % (knowledge neurons), 4.7 % (random)
    success_rate: float  # paper: 34.4 % / 0.0 %
    delta_intra_ppl: float  # paper: 8.4 / 10.1 (official averaging; inf when a float32 probability underflows)
    delta_inter_ppl: float  # paper: 7.2 / 4.3
    # beyond the paper: the fact's other paraphrases, and other facts of the relation (top-1 answers)
    paraphrase_change_rate: float  # % of the other prompts whose top-1 is no longer the old answer
    paraphrase_success_rate: float  # % of the other prompts whose top-1 is now the new answer
    intra_changed_rate: float  # % of intra-relation prompts whose top-1 answer changed
    intra_new_rate: float  # % of intra-relation prompts now answering the edit's new object
    seed: int
    # the same Delta PPL from log-probabilities (finite), and the median over edits of each edit's Delta PPL
    delta_intra_ppl_logspace: float = float("nan")
    delta_inter_ppl_logspace: float = float("nan")
    delta_intra_ppl_median: float = float("nan")
    delta_inter_ppl_median: float = float("nan")


def delta_ppl(ppl_prompts: pd.DataFrame, source: str = "p") -> float:
    r"""Table 6's Delta PPL as the official script averages it, over the edits e of one neuron set and scope:

        PPL = exp( mean_e log PPL_e ),   Delta PPL = PPL_after - PPL_before,

    with each edit's log PPL_e (``edit_log_perplexities``) from the stored probabilities
    (``source="p"``: infinite once a p is 0 in float32) or from the stored log-softmax values
    (``"logp"``: finite)."""
    if not len(ppl_prompts):
        return float("nan")
    per_edit = edit_log_perplexities(ppl_prompts, source)
    return float(ppl_difference(per_edit["before"].mean(), per_edit["after"].mean()))


def edit_log_perplexities(ppl_prompts: pd.DataFrame, source: str = "p") -> pd.DataFrame:
    """Each edit's log PPL before and after (``evaluation.log_perplexity`` of its prompts), one row per
    edit with the other columns' first value (e.g. its ``fact_id``): the terms ``delta_ppl`` averages."""
    edits = ppl_prompts[_edit_column(ppl_prompts)]
    out = ppl_prompts.groupby(edits, sort=False).first()
    for when in ("before", "after"):
        if source == "p":
            logs = ppl_prompts[f"p_{when}"].map(lambda p: math.log(p) if p > 0 else -math.inf)
        else:
            logs = ppl_prompts[f"logp_{when}"]
        out[when] = [log_perplexity(group.tolist()) for _, group in logs.groupby(edits, sort=False)]
    return out


def ppl_difference(mean_log_before, mean_log_after):
    """PPL_after - PPL_before from the mean log perplexities (``delta_ppl``); NaN when PPL_before is
    infinite. Works on arrays (one entry per bootstrap resample) as on numbers."""
    ppl = [np.where(m < 709.78, np.exp(np.minimum(m, 709.78)), np.inf)  # beyond that exp overflows a float
           for m in (np.asarray(mean_log_before, dtype=float), np.asarray(mean_log_after, dtype=float))]
    return np.where(np.isfinite(ppl[0]), ppl[1] - ppl[0], np.nan)


def _edit_column(frame: pd.DataFrame) -> str:
    """One edit per value: ``edit`` (a fact drawn twice is two edits), or ``fact_id`` in tables from before it."""
    return "edit" if "edit" in frame.columns else "fact_id"


def median_delta_ppl(ppl_prompts: pd.DataFrame) -> float:
    """The median over edits of each edit's own Delta PPL (from log-probabilities): robust to a few edits
    that send one answer's probability to 0."""
    if not len(ppl_prompts):
        return float("nan")
    per_edit = [delta_ppl(group, "logp") for _, group in ppl_prompts.groupby(_edit_column(ppl_prompts))]
    return float(pd.Series(per_edit).median())


def _summarise(table: pd.DataFrame, ppl_prompts: pd.DataFrame, para: pd.DataFrame, name: str, tag: dict, seed: int) -> UpdateSummary:
    rows = table[table["neuron_set"] == name] if len(table) else table
    ppl = ppl_prompts[ppl_prompts["neuron_set"] == name]
    para = para[para["neuron_set"] == name]
    intra = ppl[ppl["scope"] == "intra"]

    def percent(frame: pd.DataFrame, column: str) -> float:
        return float(frame[column].mean() * 100) if len(frame) else float("nan")

    def delta(scope: str, how: str = "p") -> float:
        sel = ppl[ppl["scope"] == scope]
        return delta_ppl(sel, how) if how != "median" else median_delta_ppl(sel)

    n = len(rows)
    return UpdateSummary(
        model=tag["model"], method=tag["method"], neuron_set=name, n_edits=n,
        change_rate=float(rows["changed"].mean() * 100) if n else float("nan"),
        success_rate=float(rows["success"].mean() * 100) if n else float("nan"),
        delta_intra_ppl=delta("intra"), delta_inter_ppl=delta("inter"),
        paraphrase_change_rate=percent(para, "changed"), paraphrase_success_rate=percent(para, "success"),
        intra_changed_rate=percent(intra, "top1_changed"), intra_new_rate=percent(intra, "new_after"), seed=seed,
        delta_intra_ppl_logspace=delta("intra", "logp"), delta_inter_ppl_logspace=delta("inter", "logp"),
        delta_intra_ppl_median=delta("intra", "median"), delta_inter_ppl_median=delta("inter", "median"),
    )
