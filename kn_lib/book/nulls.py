"""The nulls of the "Which neurons matter?" chapter, read from the committed ``kn nonsense`` and ``kn
redundancy`` runs: how many knowledge neurons gibberish gets, how many neurons are common to many facts,
how many facts are degenerate, and whether suppression survives without the common neurons. Intervals
resample relations; n is in facts and relations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from . import known_facts_sample
from .claims import Interval, bootstrap_ci, row_mean

RUNS: dict[str, dict[str, tuple[int, tuple[tuple[str, Any], ...]]]] = {  # model -> stage -> (facts per relation, options)
    "smollm2-135m": {"nonsense": (30, (("null_facts", 5),)), "redundancy": (30, ())},
    "gemma3-270m": {"nonsense": (8, (("null_facts", 3),)), "redundancy": (8, ())},
}
SETS = ("knowledge", "random-layer", "activation-matched")


def committed(model: str, stage: str, table: str) -> tuple[pd.DataFrame | None, str]:
    """A null's committed rows and what a page says of them (as ``faithfulness.committed``)."""
    from .faithfulness import unfinished

    size, params = RUNS[model][stage]
    run = known_facts_sample(model, size, params=params)
    rows, status = run.committed(stage, table)
    return rows, (status or unfinished(run, stage)) if rows is not None else status


def command(model: str, stage: str) -> str:
    size, params = RUNS[model][stage]
    return (f"kn {stage} --preset known-facts --model {model} --facts-per-relation {size}"
            + "".join(f" --{k.replace('_', '-')} {v}" for k, v in params))


def _mean(frame: pd.DataFrame, value: str, n_boot: int, seed: int) -> Interval:
    return bootstrap_ci(frame, row_mean(value), cluster="relation", n_boot=n_boot, seed=seed)


def nonsense_summary(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Interval | int]:
    """Mean refined-set size on real and on nonsense prompts, their ratio (nonsense / real, a ratio of
    means), the share of facts with any nonsense neuron, and the share of nonsense neurons that are the
    fact's own (over facts with any)."""
    ratio = bootstrap_ci(table, lambda f: float(f["n_refined_nonsense"].mean() / f["n_refined_real"].mean())
                         if f["n_refined_real"].mean() > 0 else float("nan"), cluster="relation", n_boot=n_boot, seed=seed)
    some = table[table["n_refined_nonsense"] > 0].assign(own=lambda f: f["n_shared"] / f["n_refined_nonsense"])
    return {"real": _mean(table, "n_refined_real", n_boot, seed), "nonsense": _mean(table, "n_refined_nonsense", n_boot, seed),
            "ratio": ratio, "any": _mean(table.assign(any=table["n_refined_nonsense"] > 0), "any", n_boot, seed),
            "own": _mean(some, "own", n_boot, seed) if len(some) else Interval(np.nan, np.nan, np.nan, 0, n_boot, 0.95, seed),
            "n_facts": table["fact_id"].nunique(), "n_relations": table["relation"].nunique()}


def degenerate_by_set(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per neuron set (knowledge neurons, each control): the share of facts whose set is degenerate (Chen et
    al.'s thresholds on accuracy) and the mean accuracy drop with the whole set zeroed."""
    from ..experiments.redundancy import degenerate_summary

    out = []
    for name in SETS:
        mine = rows[rows["neuron_set"] == name]
        if mine.empty:
            continue
        facts = degenerate_summary(mine.drop(columns=["neuron_set"]))
        facts = facts.dropna(subset=["drop_both"]).assign(degenerate=lambda f: f["degenerate"].astype(float))
        share, both = _mean(facts, "degenerate", n_boot, seed), _mean(facts, "drop_both", n_boot, seed)
        out.append({"neuron_set": name, "degenerate": share.estimate, "degenerate_low": share.low, "degenerate_high": share.high,
                    "drop_both": both.estimate, "drop_both_low": both.low, "drop_both_high": both.high,
                    "n_facts": facts["fact_id"].nunique(), "n_relations": facts["relation"].nunique()})
    return pd.DataFrame(out)


def _kept(table: pd.DataFrame) -> pd.DataFrame:
    """The facts' own prompts, for facts that keep a neuron once the common ones are removed (the stage
    averages officially: a fact left without any counts with zero change, which says nothing here)."""
    own = table[table["scope"] == "own"] if "scope" in table else table
    return own[own["n_kn"] > 0] if "n_kn" in own else own


def _fact_changes(table: pd.DataFrame) -> pd.DataFrame:
    """Per neuron set, operation and fact (``_kept``): the relative change of p(answer) in percent, the
    fact's prompts averaged."""
    own = _kept(table)
    own = own.assign(change=100 * (own["p_after"] - own["p_before"]) / own["p_before"])
    return own.groupby(["neuron_set", "operation", "relation", "fact_id"], as_index=False)["change"].mean()


def filtered_changes(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Suppress / amplify with the common neurons filtered out: per neuron set and operation, the mean over
    facts of the relative change of p(answer) (each fact's prompts averaged first), in percent."""
    facts = _fact_changes(table)
    out = []
    order = {name: i for i, name in enumerate(SETS)}
    groups = sorted(facts.groupby(["neuron_set", "operation"]), key=lambda item: (item[0][1] != "suppress", order.get(item[0][0], 9)))
    for (name, operation), g in groups:  # suppress first, knowledge neurons before their controls
        ci = _mean(g, "change", n_boot, seed)
        out.append({"neuron_set": name, "operation": operation, "change": ci.estimate, "low": ci.low, "high": ci.high,
                    "n_facts": g["fact_id"].nunique(), "n_relations": g["relation"].nunique()})
    return pd.DataFrame(out)


def filtered_vs_controls(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per operation and control: mean over facts of (knowledge neurons' change - the control's change) of
    p(answer) in percent, each fact paired with its own control; relations resampled."""
    facts = _fact_changes(table)
    wide = facts.pivot_table(index=["operation", "relation", "fact_id"], columns="neuron_set", values="change").reset_index()
    out = []
    for control in SETS[1:]:
        if control not in wide or "knowledge" not in wide:
            continue
        for operation, g in wide.dropna(subset=["knowledge", control]).groupby("operation"):
            ci = _mean(g.assign(difference=g["knowledge"] - g[control]), "difference", n_boot, seed)
            out.append({"operation": operation, "control": control, "difference": ci.estimate, "low": ci.low, "high": ci.high,
                        "n_facts": g["fact_id"].nunique(), "n_relations": g["relation"].nunique()})
    return pd.DataFrame(out, columns=["operation", "control", "difference", "low", "high", "n_facts", "n_relations"])


def null_rows(summaries: dict[str, dict], degenerate: dict[str, pd.DataFrame], differences: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The nulls' verdict rows, per model, for the claims chapter (directions, no published value):
    nonsense prompts' refined neurons as a multiple of real prompts'; the share of degenerate facts, knowledge
    neurons minus the larger of the two controls' shares (point estimate beside the knowledge neurons' interval);
    suppression without common neurons against each control."""
    rows = []
    for model, s in summaries.items():
        r = s["ratio"]
        reading = ("no data" if not np.isfinite(r.low) else "fewer on nonsense" if r.high < 1 else
                   "more on nonsense" if r.low > 1 else "as many on nonsense (1 inside the interval)")
        rows.append({"model": model, "question": "refined neurons on nonsense prompts, × those on the fact's own",
                     "estimate": r.estimate, "low": r.low, "high": r.high, "n": f"{s['n_facts']} facts ({s['n_relations']})", "reading": reading})
    for model, frame in degenerate.items():
        mine = frame.set_index("neuron_set")
        if "knowledge" not in mine.index:
            continue
        kn = mine.loc["knowledge"]
        top = max((mine.loc[c, "degenerate_high"] for c in mine.index if c != "knowledge"), default=float("nan"))
        reading = "above both controls" if np.isfinite(top) and kn["degenerate_low"] > top else "not above the controls"
        rows.append({"model": model, "question": "share of facts with degenerate knowledge neurons (Chen et al.)",
                     "estimate": kn["degenerate"], "low": kn["degenerate_low"], "high": kn["degenerate_high"],
                     "n": f"{int(kn['n_facts'])} facts ({int(kn['n_relations'])})", "reading": reading})
    for model, frame in differences.items():
        for r in frame[frame["operation"] == "suppress"].itertuples():
            reading = "larger than the control's" if r.high < 0 else "smaller than the control's" if r.low > 0 else "not detected"
            rows.append({"model": model, "question": f"suppression without common neurons minus {r.control}, percentage points of p change",
                         "estimate": r.difference, "low": r.low, "high": r.high, "n": f"{r.n_facts} facts ({r.n_relations})",
                         "reading": f"the fall is {reading}" if reading != "not detected" else "no difference detected"})
    return pd.DataFrame(rows, columns=["model", "question", "estimate", "low", "high", "n", "reading"])


def shown_null_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """``null_rows`` as a page shows it."""
    return pd.DataFrame({"model": rows["model"], "question": rows["question"],
                         "ours [95% CI]": [f"{r.estimate:.2f} [{r.low:.2f}, {r.high:.2f}]" if np.isfinite(r.estimate) else "—"
                                           for r in rows.itertuples()], "n": rows["n"], "reading": rows["reading"]})


def committed_nulls(models, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every committed null of ``models``: ``nonsense`` (tables), ``summaries`` (``nonsense_summary``),
    ``filtered`` (tables), ``differences`` (``filtered_vs_controls``), ``degenerate`` (``degenerate_by_set``),
    and ``missing``: a line per run not committed or not finished, with its command."""
    out: dict[str, Any] = {"nonsense": {}, "summaries": {}, "filtered": {}, "differences": {}, "degenerate": {}, "missing": []}
    for model in models:
        for stage, table in (("nonsense", "table"), ("redundancy", "filtered"), ("redundancy", "degenerate")):
            rows, status = committed(model, stage, table)
            if rows is None or status:
                line = f"{model}: {status} (`{command(model, stage)}`)"
                if line not in out["missing"]:
                    out["missing"].append(line)
            if rows is None:
                continue
            if table == "table":
                out["nonsense"][model], out["summaries"][model] = rows, nonsense_summary(rows, n_boot, seed)
            elif table == "filtered":
                out["filtered"][model], out["differences"][model] = rows, filtered_vs_controls(rows, n_boot, seed)
            else:
                out["degenerate"][model] = degenerate_by_set(rows, n_boot, seed)
    return out
