"""The "Which neurons matter?" chapter's helpers: the committed ``kn faithfulness`` runs of both models, one
summary row per attribution method with relation-clustered intervals, and the verdict rows.

Every interval resamples relations (the facts of a relation share templates and neurons); each statistic
first averages a fact's prompts, then takes the mean over facts, and n is stated in facts and relations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import BookSample, known_facts_sample
from .claims import Interval, bootstrap_ci

# the committed runs: kn faithfulness --preset known-facts --model M [--facts-per-relation N] + these options
RUNS: dict[str, tuple[int, tuple[tuple[str, Any], ...]]] = {
    "smollm2-135m": (30, (("benchmark_facts", 12),)),
    "gemma3-270m": (8, (("benchmark_facts", 5), ("logprob_increase", "no"))),
}
LABELS = {  # method -> what a reader calls it
    "ig-m20": "IG, m = 20 (paper)", "ig-left-m20": "IG, left sum (official code)", "ig-converged": "IG, converged (32 Gauss-Legendre nodes)",
    "grad-x-act": "gradient × activation", "activation": "activation (paper's baseline)",
    "logprob-increase": "log-probability increase (Yu & Ananiadou)", "refined": "refined knowledge neurons",
    "random": "same-layer random", "exact": "exact top-k (oracle)",
}
SCORED = ("ig-m20", "ig-left-m20", "ig-converged", "grad-x-act", "activation", "logprob-increase")


def sample(model: str) -> BookSample:
    size, params = RUNS[model]
    return known_facts_sample(model, size, params=params)


def committed(model: str) -> tuple[dict[str, pd.DataFrame] | None, str]:
    """The model's committed ``curve``, ``ranks`` and ``skipped`` tables, and what a page says of them
    ("" when finished; ``BookSample.committed``'s words otherwise)."""
    run = sample(model)
    curve, status = run.committed("faithfulness", "curve")
    if curve is None:
        return None, status
    return {"curve": curve, "ranks": run.load("faithfulness", "ranks"), "skipped": run.load("faithfulness", "skipped")}, status


def command(model: str) -> str:
    size, params = RUNS[model]
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in params)
    return f"kn faithfulness --preset known-facts --model {model} --facts-per-relation {size} {options}"


def per_fact(frame: pd.DataFrame, value: str, by: tuple[str, ...] = ("method",)) -> pd.DataFrame:
    """A value averaged over each fact's prompts: one row per fact (and ``by``)."""
    return frame.groupby(["relation", "fact_id", *by], as_index=False)[value].mean()


def fact_mean(frame: pd.DataFrame, value: str, n_boot: int = 1000, seed: int = 0) -> Interval:
    """Mean over facts of ``value`` (one row per fact), relations resampled."""
    return bootstrap_ci(frame, lambda f: float(f[value].mean()), cluster="relation", n_boot=n_boot, seed=seed)


def curve_areas(curve: pd.DataFrame) -> pd.DataFrame:
    """Per fact and method: the area of the faithfulness curve (drop = -Delta log p against log k)."""
    from ..experiments.faithfulness import curve_area

    rows = []
    ranked = curve[curve["method"] != "refined"]
    for (relation, fact, method), g in ranked.groupby(["relation", "fact_id", "method"]):
        g = g.groupby("k", as_index=False)["delta_log_p"].mean().sort_values("k")
        rows.append({"relation": relation, "fact_id": fact, "method": method, "area": curve_area(g["k"], -g["delta_log_p"])})
    return pd.DataFrame(rows)


def method_table(tables: dict[str, pd.DataFrame], k: int = 10, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per method: recall@k, the drop at k, the curve's area, Spearman over random neurons, seconds
    per prompt (estimate, low, high for each; ``n_facts``, ``n_relations``)."""
    curve, ranks = tables["curve"], tables["ranks"]
    at_k = curve[curve["k"] == k].assign(drop=lambda f: -f["delta_log_p"], flip=lambda f: f["flip"].astype(float))
    areas = curve_areas(curve)
    rows = []
    for method in [*SCORED, "exact", "random"]:
        if method not in set(curve["method"]):
            continue
        row: dict[str, Any] = {"method": method}
        parts = {"recall": per_fact(at_k[at_k["method"] == method], "recall"), "drop": per_fact(at_k[at_k["method"] == method], "drop"),
                 "flips": per_fact(at_k[at_k["method"] == method], "flip"), "area": areas[areas["method"] == method]}
        if method in SCORED:
            parts["spearman"] = per_fact(ranks[ranks["method"] == method].dropna(subset=["spearman_random"]), "spearman_random")
            parts["seconds"] = per_fact(ranks[ranks["method"] == method], "seconds")
        for name, frame in parts.items():
            value = {"recall": "recall", "drop": "drop", "flips": "flip", "area": "area", "spearman": "spearman_random", "seconds": "seconds"}[name]
            ci = fact_mean(frame, value, n_boot, seed)
            row |= {name: ci.estimate, f"{name}_low": ci.low, f"{name}_high": ci.high}
        row["n_facts"], row["n_relations"] = parts["recall"]["fact_id"].nunique(), parts["recall"]["relation"].nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(tables: dict[str, pd.DataFrame], a: str, b: str, value: str = "recall", k: int = 10,
                      n_boot: int = 1000, seed: int = 0) -> Interval:
    """Mean over facts of (a's value - b's value) at k, relations resampled (each fact pairs with itself)."""
    curve = tables["curve"]
    at_k = curve[(curve["k"] == k) & curve["method"].isin([a, b])].assign(drop=lambda f: -f["delta_log_p"])
    wide = per_fact(at_k, value).pivot_table(index=["relation", "fact_id"], columns="method", values=value).dropna().reset_index()
    wide["difference"] = wide[a] - wide[b]
    return fact_mean(wide, "difference", n_boot, seed)


def direction(ci: Interval) -> str:
    """"higher" / "lower" when the interval excludes 0, "no difference detected" otherwise."""
    if not np.isfinite(ci.low):
        return "no data"
    if ci.low > 0:
        return "higher"
    if ci.high < 0:
        return "lower"
    return "no difference detected"


def verdict_rows(tables_by_model: dict[str, dict[str, pd.DataFrame]], k: int = 10, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The chapter's verdicts, per model: is IG (m = 20) more faithful to exact ablation than the cheap
    scores and than its converged self, on recall@k and on the drop of its top-k?"""
    questions = [("ig-m20", "grad-x-act", "recall"), ("ig-m20", "grad-x-act", "drop"), ("ig-m20", "ig-converged", "recall"),
                 ("ig-m20", "activation", "recall"), ("ig-m20", "logprob-increase", "recall")]
    rows = []
    for model, tables in tables_by_model.items():
        present = set(tables["curve"]["method"])
        for a, b, value in questions:
            if b not in present:
                continue
            ci = paired_difference(tables, a, b, value, k, n_boot, seed)
            n = tables["curve"][tables["curve"]["method"] == a]
            rows.append({"model": model, "comparison": f"{LABELS[a]} − {LABELS[b]}", "metric": f"recall@{k}" if value == "recall" else f"drop of top-{k}",
                         "estimate": ci.estimate, "low": ci.low, "high": ci.high, "n_facts": n["fact_id"].nunique(),
                         "n_relations": n["relation"].nunique(), "IG is": direction(ci)})
    return pd.DataFrame(rows)
