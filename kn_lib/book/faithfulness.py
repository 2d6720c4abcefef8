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
from .claims import Interval, bootstrap_ci, row_mean

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


def unfinished(run: BookSample, stage: str) -> str:
    """"" when every relation shard of a per-relation stage is committed, else "not finished: n of N
    relations" (``BookSample.committed`` cannot tell: each finished shard is whole)."""
    wanted = {r for r, facts in run.settings().sample().items() if facts}
    done = set(run.manifest(stage)["shards"]) & wanted
    return "" if done == wanted else f"not finished: {len(done)} of {len(wanted)} relations"


def committed(model: str) -> tuple[dict[str, pd.DataFrame] | None, str]:
    """The model's committed ``curve``, ``ranks`` and ``skipped`` tables, and what a page says of them
    ("" when finished; ``BookSample.committed``'s words, or ``unfinished``'s, otherwise)."""
    run = sample(model)
    curve, status = run.committed("faithfulness", "curve")
    if curve is None:
        return None, status
    status = status or unfinished(run, "faithfulness")
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
    return bootstrap_ci(frame, row_mean(value), cluster="relation", n_boot=n_boot, seed=seed)


def curve_areas(curve: pd.DataFrame) -> pd.DataFrame:
    """Per fact and method: the area of the faithfulness curve (drop = -Delta log p against log k)."""
    from ..experiments.faithfulness import curve_area

    rows = []
    ranked = curve[curve["method"] != "refined"]
    for (relation, fact, method), g in ranked.groupby(["relation", "fact_id", "method"]):
        g = g.groupby("k", as_index=False)["delta_log_p"].mean().sort_values("k")
        rows.append({"relation": relation, "fact_id": fact, "method": method, "area": curve_area(g["k"], -g["delta_log_p"])})
    return pd.DataFrame(rows)


def fact_median(frame: pd.DataFrame, value: str, n_boot: int = 1000, seed: int = 0) -> Interval:
    """Median over facts of ``value``, relations resampled: for seconds, whose mean a single slow prompt (a
    first call that builds caches, a busy moment of the machine) would move."""
    return bootstrap_ci(frame, lambda f: float(f[value].median()), cluster="relation", n_boot=n_boot, seed=seed)


def method_table(tables: dict[str, pd.DataFrame], k: int = 10, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per method: recall@k, the drop at k, the curve's area, Spearman over random neurons (means over
    facts) and the median seconds per prompt (estimate, low, high for each; ``n_facts``, ``n_relations``)."""
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
        if method in SCORED or method == "exact":  # exact: zeroing every candidate once (about a thousand forward rows)
            parts["seconds"] = per_fact(ranks[ranks["method"] == method], "seconds")
        for name, frame in parts.items():
            value = {"recall": "recall", "drop": "drop", "flips": "flip", "area": "area", "spearman": "spearman_random", "seconds": "seconds"}[name]
            ci = fact_median(frame, value, n_boot, seed) if name == "seconds" else fact_mean(frame, value, n_boot, seed)
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
    """"more faithful" / "less faithful" (IG's value minus the other's: higher recall or a larger drop is
    more faithful) when the interval excludes 0, "no difference detected" otherwise; "too few
    relations" below the claims' ``MIN_CLUSTERS`` (a relation-clustered interval on fewer under-covers)."""
    from .claims import MIN_CLUSTERS

    if not np.isfinite(ci.low):
        return "no data"
    if ci.n_clusters < MIN_CLUSTERS:
        return "too few relations"
    if ci.low > 0:
        return "more faithful"
    if ci.high < 0:
        return "less faithful"
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
            rows.append({"model": model, "against": LABELS[b], "metric": f"recall@{k}" if value == "recall" else f"drop of top-{k}",
                         "estimate": ci.estimate, "low": ci.low, "high": ci.high, "n_facts": n["fact_id"].nunique(),
                         "n_relations": n["relation"].nunique(), "IG is": direction(ci)})
    return pd.DataFrame(rows)


def no_index(frame: pd.DataFrame):
    """A table as a page shows it: no index column."""
    return frame.style.hide(axis="index")


def by_model(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-model tables stacked under a first column ``model``."""
    return pd.concat([f.assign(model=m)[["model", *f.columns]] for m, f in frames.items()], ignore_index=True) if frames else pd.DataFrame()


def interval_text(estimate: float, low: float, high: float, digits: str = ".3g") -> str:
    """"0.71 [0.50, 0.77]"; "—" where there is no estimate."""
    if not np.isfinite(estimate):
        return "—"

    def text(x: float) -> str:
        out = f"{x:{digits}}"
        return out[1:] if out.startswith("-") and float(out) == 0 else out  # never "-0.00"

    return f"{text(estimate)} [{text(low)}, {text(high)}]"


def shown_methods(table: pd.DataFrame, k: int = 10, part: str = "finding") -> pd.DataFrame:
    """``method_table`` as a page shows it, one interval per cell: ``part="finding"`` (which neurons a method
    names: recall@k, Spearman over random neurons, median seconds) or ``"removing"`` (what zeroing its top-k
    does: drop of log p, the curve's area, flips)."""
    def ci(row, name, digits=".2f"):
        value = getattr(row, name, float("nan"))
        return interval_text(value, getattr(row, f"{name}_low"), getattr(row, f"{name}_high"), digits) if np.isfinite(value) else "—"

    rows = list(table.itertuples())
    out = {"method": [LABELS[r.method] for r in rows]}
    if part == "finding":
        out |= {f"recall@{k}": [ci(r, "recall") for r in rows],
                "Spearman, random neurons": [ci(r, "spearman") if "spearman" in table else "—" for r in rows],
                "s per prompt (median)": [f"{r.seconds:.3g}" if "seconds" in table and np.isfinite(r.seconds) else "—" for r in rows]}
    elif part == "removing":
        out |= {f"drop of log p, top-{k}": [ci(r, "drop") for r in rows], "curve area": [ci(r, "area") for r in rows],
                f"flips, top-{k}": [ci(r, "flips") for r in rows]}
    else:
        raise ValueError(f"part must be 'finding' or 'removing', got {part!r}")
    out["n facts (relations)"] = [f"{r.n_facts} ({r.n_relations})" for r in rows]
    return pd.DataFrame(out)


def shown_verdicts(rows: pd.DataFrame) -> pd.DataFrame:
    """``verdict_rows`` as a page shows it."""
    return pd.DataFrame({
        "model": rows["model"], "IG, m = 20, against": rows["against"], "metric": rows["metric"],
        "difference [95% CI]": [interval_text(r.estimate, r.low, r.high, ".2f") for r in rows.itertuples()],
        "n facts (relations)": [f"{r.n_facts} ({r.n_relations})" for r in rows.itertuples()],
        "IG at m = 20 is": rows["IG is"],
    })


COST_LABELS = {**LABELS, "logprob-increase-setup": "log-probability increase, setup (once per model)",
               "exact-ablation-1000": "exact ablation of 1,000 neurons (the ground truth)"}


def cost_table(cost: pd.DataFrame) -> pd.DataFrame:
    """``benchmarks/results/faithfulness_cost.csv`` as a page shows it: per model and method the median
    seconds per prompt and GFLOP, and both as multiples of IG at m = 20 (methods that did not run left out)."""
    rows = cost[cost["method"].isin(COST_LABELS) & cost["seconds_median"].notna()]
    out = rows.groupby(["model", "method"], sort=False).agg(
        seconds=("seconds_median", "median"), times=("seconds_vs_ig_m20", "median"), gflop=("gflop", "median"),
        gflop_times=("gflop_vs_ig_m20", "median"), n=("seconds_median", "size")).reset_index()
    return pd.DataFrame({"model": out["model"], "method": [COST_LABELS[m] for m in out["method"]],
                         "s per prompt": [f"{v:.3g}" for v in out["seconds"]], "× IG's time": [f"{v:.2g}" for v in out["times"]],
                         "GFLOP": [f"{v:,.0f}" if v >= 1000 else f"{v:.3g}" for v in out["gflop"]], "× IG's GFLOP": [f"{v:.2g}" for v in out["gflop_times"]],
                         "n prompts": out["n"]})

