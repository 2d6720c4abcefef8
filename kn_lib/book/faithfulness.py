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


def _ci(estimate: float, low: float, high: float, digits: str = ".3g") -> str:
    if not np.isfinite(estimate):
        return "—"
    return f"{estimate:{digits}} [{low:{digits}}, {high:{digits}}]"


def shown_methods(table: pd.DataFrame, k: int = 10, part: str = "finding") -> pd.DataFrame:
    """``method_table`` as a page shows it, one interval per cell: ``part="finding"`` (which neurons a method
    names: recall@k, Spearman over random neurons, median seconds) or ``"removing"`` (what zeroing its top-k
    does: drop of log p, the curve's area, flips)."""
    def ci(row, name, digits=".2f"):
        value = getattr(row, name, float("nan"))
        return _ci(value, getattr(row, f"{name}_low"), getattr(row, f"{name}_high"), digits) if np.isfinite(value) else "—"

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
        "difference [95% CI]": [_ci(r.estimate, r.low, r.high, ".2f") for r in rows.itertuples()],
        "n facts (relations)": [f"{r.n_facts} ({r.n_relations})" for r in rows.itertuples()],
        "IG at m = 20 is": rows["IG is"],
    })


# -- generated sentences: one template per case, each branch tested (tests/test_book_faithfulness.py) ------------

def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 fact", "2 facts"."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _row(table: pd.DataFrame, method: str) -> Any:
    rows = table[table["method"] == method]
    return next(rows.itertuples()) if len(rows) else None


def _difference(estimate: float, low: float, high: float, direction: str) -> str:
    """How a verdict reads: which side is more faithful, and by how much (``direction`` from ``direction``)."""
    span = f"{estimate:+.2f} [{low:+.2f}, {high:+.2f}]"
    return {"more faithful": f"IG is more faithful ({span})", "less faithful": f"gradient × activation is more faithful ({span})",
            "too few relations": f"too few relations to tell ({span})", "no data": "there is no data to compare"}.get(
        direction, f"no difference is detected ({span})")


def headline(verdicts: pd.DataFrame, method_tables: dict[str, pd.DataFrame], k: int = 10) -> str:
    """The chapter's answer: per model, recall@k of IG (m = 20) and of gradient × activation, their time
    ratio, and which one the paired interval favours."""
    if verdicts.empty or not method_tables:
        return "No faithfulness run is committed yet, so this page has no answer to give."
    sentences = []
    for model, table in method_tables.items():
        ig, gxa = _row(table, "ig-m20"), _row(table, "grad-x-act")
        mine = verdicts[(verdicts["model"] == model) & (verdicts["against"] == LABELS["grad-x-act"]) &
                        (verdicts["metric"] == f"recall@{k}")]
        if ig is None or gxa is None or mine.empty:
            sentences.append(f"On {model} the two methods were not both scored.")
            continue
        ratio = ig.seconds / gxa.seconds if gxa.seconds > 0 else float("nan")
        sentences.append(
            f"On {model} ({plural(ig.n_facts, 'fact')} in {plural(ig.n_relations, 'relation')}), the paper's integrated gradients "
            f"(m = 20) recovers {ig.recall:.0%} of the {k} neurons whose removal lowers the answer's probability most; "
            f"gradient × activation, one gradient instead of twenty per layer ({ratio:.0f}× less time), recovers {gxa.recall:.0%}: "
            f"{_difference(*mine.iloc[0][['estimate', 'low', 'high', 'IG is']])}.")
    return " ".join(sentences)


def cost_sentence(method_tables: dict[str, pd.DataFrame]) -> str:
    """Seconds per prompt of the scores against IG's, per model."""
    parts = []
    for model, table in method_tables.items():
        ig = _row(table, "ig-m20")
        if ig is None:
            continue
        others = [(LABELS[m], _row(table, m)) for m in ("ig-converged", "grad-x-act", "logprob-increase") if _row(table, m) is not None]
        timed = ", ".join(f"{name} {row.seconds / ig.seconds:.2g}×" for name, row in others)
        parts.append(f"on {model}, IG at m = 20 took {ig.seconds:.2g} s per prompt; relative to it, {timed}" if timed
                     else f"on {model}, IG at m = 20 took {ig.seconds:.2g} s per prompt")
    if not parts:
        return "No method was timed."
    return "Time per prompt, measured in the runs themselves: " + "; ".join(parts) + "."


def curve_sentence(method_tables: dict[str, pd.DataFrame], k: int = 10) -> str:
    """The drop of log p(answer) at k for IG, gradient x activation, the oracle and random neurons."""
    parts = []
    for model, table in method_tables.items():
        rows = [(name, _row(table, m)) for name, m in (("IG's", "ig-m20"), ("gradient × activation's", "grad-x-act"),
                                                        ("the exact top-k's", "exact"), ("same-layer random neurons'", "random"))]
        said = ", ".join(f"{name} by {row.drop:.2f}" for name, row in rows if row is not None)
        if said:
            parts.append(f"on {model}, zeroing {said.replace('top-k', f'top-{k}')}")
    if not parts:
        return "No faithfulness curve is committed."
    return f"With {k} neurons zeroed, log p(answer) falls " + "; ".join(parts) + " (means over facts)."


def nonsense_sentence(summaries: dict[str, dict]) -> str:
    """What the nonsense null says, per model: refined neurons on nonsense against real prompts."""
    if not summaries:
        return "The nonsense-prompt runs are not committed yet."
    parts = []
    for model, s in summaries.items():
        ratio = s["ratio"]
        if not np.isfinite(ratio.estimate):
            parts.append(f"on {model} the facts have no refined knowledge neuron on their own prompts, so there is nothing to compare")
            continue
        size = ("as many as" if ratio.low <= 1 <= ratio.high else "more than" if ratio.low > 1 else "fewer than")
        own = s["own"]
        own_text = (f"; {own.estimate:.0%} of them are the fact's own" if np.isfinite(own.estimate)
                    else "; none of the facts gets any on nonsense")
        parts.append(f"on {model} nonsense prompts get {ratio.estimate:.2f}× [{ratio.low:.2f}, {ratio.high:.2f}] the refined neurons "
                     f"of the real ones, {size} real prompts ({plural(s['n_facts'], 'fact')}){own_text}")
    return "The pipeline's answer to gibberish: " + "; ".join(parts) + "."


def filtered_sentence(differences: dict[str, pd.DataFrame]) -> str:
    """Whether suppression without the common neurons still beats both controls, per model."""
    if not differences:
        return "The common-neuron runs are not committed yet."
    parts = []
    for model, frame in differences.items():
        rows = frame[frame["operation"] == "suppress"]
        if rows.empty:
            parts.append(f"on {model} no fact keeps a knowledge neuron once the common ones are removed")
            continue
        below = [r.control for r in rows.itertuples() if r.high < 0]
        spans = ", ".join(f"{r.difference:+.1f} [{r.low:+.1f}, {r.high:+.1f}] points against {r.control}" for r in rows.itertuples())
        if len(below) == len(rows):
            verdict = "it still lowers p(answer) more than " + ("both controls" if len(rows) == 2 else "its control")
        elif below:
            verdict = f"it lowers p(answer) more than the {below[0]} control only"
        else:
            verdict = "it does not lower p(answer) more than " + ("either control" if len(rows) == 2 else "its control")
        parts.append(f"on {model} {verdict} ({spans})")
    return "Without the common neurons, suppression: " + "; ".join(parts) + "."


def degenerate_sentence(frames: dict[str, pd.DataFrame]) -> str:
    """The share of degenerate facts for the knowledge neurons beside their controls, per model."""
    if not frames:
        return "The degenerate-neuron runs are not committed yet."
    parts = []
    for model, frame in frames.items():
        mine = frame.set_index("neuron_set")
        if "knowledge" not in mine.index:
            parts.append(f"on {model} no fact has two knowledge neurons to split")
            continue
        kn = mine.loc["knowledge"]
        controls = ", ".join(f"{name} {mine.loc[name, 'degenerate']:.0%}" for name in mine.index if name != "knowledge")
        parts.append(f"on {model} {kn['degenerate']:.0%} [{kn['degenerate_low']:.0%}, {kn['degenerate_high']:.0%}] of "
                     f"{plural(int(kn['n_facts']), 'fact')} have degenerate knowledge neurons" + (f" (controls: {controls})" if controls else ""))
    return "By Chen et al.'s thresholds, " + "; ".join(parts) + "."


def summary_line(verdicts: pd.DataFrame) -> str:
    """Per model, how the verdict rows came out: "smollm2-135m: IG more faithful in 2 of 5 comparisons, less
    faithful in 1, no difference detected in 2"."""
    if verdicts.empty:
        return "no faithfulness run is committed yet"
    parts = []
    for model, rows in verdicts.groupby("model", sort=False):
        counts = rows["IG is"].value_counts()
        said = [f"{words} in {int(counts[key])}" for key, words in (("more faithful", "IG more faithful"), ("less faithful", "less faithful"),
                                                                     ("no difference detected", "no difference detected"),
                                                                     ("too few relations", "too few relations"), ("no data", "no data"))
                if counts.get(key, 0)]
        said[0] = said[0] + f" of {plural(len(rows), 'comparison')}"
        parts.append(f"{model}: " + ", ".join(said))
    return "; ".join(parts)


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
                         "GFLOP": [f"{v:.3g}" for v in out["gflop"]], "× IG's GFLOP": [f"{v:.2g}" for v in out["gflop_times"]],
                         "n prompts": out["n"]})


def cheap_sentence(verdicts: pd.DataFrame, cost: pd.DataFrame | None) -> str:
    """Said plainly, per model: is gradient x activation, at its measured cost, as faithful as IG (recall@10)?"""
    if verdicts.empty:
        return "No faithfulness run is committed, so the cost cannot be weighed against faithfulness."
    parts = []
    for model, rows in verdicts.groupby("model", sort=False):
        mine = rows[(rows["against"] == LABELS["grad-x-act"]) & rows["metric"].str.startswith("recall")]
        if mine.empty:
            continue
        row = mine.iloc[0]
        times = None
        if cost is not None:
            timed = cost[(cost["model"] == model) & (cost["method"] == "grad-x-act")]["seconds_vs_ig_m20"].dropna()
            times = 1 / float(timed.median()) if len(timed) else None
        cheaper = f"{times:.0f}× cheaper" if times else "cheaper"
        span = f"{row['estimate']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]"
        said = {"less faithful": f"gradient × activation, {cheaper}, finds the exact top-10 better than IG ({span} for IG)",
                "more faithful": f"IG finds the exact top-10 better than gradient × activation ({span}), which is {cheaper}",
                "no difference detected": f"no difference is detected between IG and gradient × activation ({span}), "
                                          f"and gradient × activation is {cheaper}"}.get(row["IG is"], f"the comparison has {row['IG is']}")
        parts.append(f"on {model}, {said}")
    return ("Plainly: " + "; ".join(parts) + ".") if parts else "Gradient × activation was not scored."


def refined_sentence(tables: dict[str, pd.DataFrame], n_boot: int = 1000, seed: int = 0) -> str:
    """What zeroing a fact's refined knowledge neurons together does to the benchmark's prompt, per model."""
    parts = []
    for model, found in tables.items():
        rows = found["curve"][found["curve"]["method"] == "refined"].assign(drop=lambda f: -f["delta_log_p"],
                                                                             flip=lambda f: f["flip"].astype(float))
        if rows.empty:
            parts.append(f"on {model} no benchmarked fact has refined knowledge neurons")
            continue
        drop, flips = fact_mean(per_fact(rows, "drop"), "drop", n_boot, seed), fact_mean(per_fact(rows, "flip"), "flip", n_boot, seed)
        parts.append(f"on {model} ({plural(rows['fact_id'].nunique(), 'fact')}, k = {rows['k'].min()} to {rows['k'].max()}, "
                     f"mean {rows['k'].mean():.1f}) it lowers log p(answer) by {drop.estimate:.2f} [{drop.low:.2f}, {drop.high:.2f}] "
                     f"and turns {flips.estimate:.0%} [{flips.low:.0%}, {flips.high:.0%}] of the correct answers wrong")
    return ("Zeroing a fact's refined knowledge neurons together: " + "; ".join(parts) + ".") if parts else ""
