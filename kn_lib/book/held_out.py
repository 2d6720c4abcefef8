"""Is the effect selection on the outcome? Figures 4-5 on prompts the knowledge neurons were not chosen on.

``kn held-out`` (``experiments.held_out``) refines each fact's knowledge neurons on a seeded half of its
prompts and suppresses / amplifies them on both halves, beside the two non-KN matched controls. Three
readings, each over relations (the unit Figures 4-5 average over; a relation without any knowledge
neuron enters as 0%, as the official scripts count it):

* ``half_effects``: the change of p(answer) on each half, for each neuron set;
* ``retention``: the held-out effect over the selection half's (``bootstrap.group_mean_ratio``, paired by
  relation), judged by ``claims.retention_verdict``: an effect found only on the prompts that chose the
  neurons would be lost held out;
* ``held_out_controls``: knowledge neurons minus each control on the held-out half, judged by
  ``controls.beats_control``.

``as_figure45`` turns one half into the rows ``claims.paper_claims`` reads, so the paper's own claims can
be judged on held-out prompts with the same rule.
"""

from __future__ import annotations

import pandas as pd

from ..experiments.held_out import by_half
from .bootstrap import VERDICT_BOOT, bootstrap_ci, group_mean_ratio, row_mean
from .claims import retention_verdict
from .controls import CONTROL_SETS, KNOWLEDGE, beats_control, paired_differences

# The known-facts samples with a committed ``kn held-out`` run: model -> facts per relation (None: the default)
HELD_OUT_RUNS: dict[str, int | None] = {"smollm2-135m": None, "gemma3-270m": 8}
OPERATIONS = {"suppress": -1, "amplify": +1}  # the sign of the change the paper predicts
EFFECT_COLUMNS = ["model", "operation", "neuron_set", "half", "estimate", "ci_low", "ci_high", "n_relations"]
RETENTION_COLUMNS = ["model", "operation", "selection", "held_out", "retained", "ci_low", "ci_high", "n_relations", "verdict"]
CONTROL_COLUMNS = ["model", "operation", "control", "estimate", "ci_low", "ci_high", "n_relations", "verdict"]


def stored_held_out(runs: dict[str, int | None] | None = None) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """model -> its committed held-out ``table`` (own prompts; the non-KN controls under the controls'
    names), and one line for each model whose run is not committed."""
    from . import known_facts_sample

    tables, missing = {}, []
    for model, size in (HELD_OUT_RUNS if runs is None else runs).items():
        table, why = known_facts_sample(model, size).committed("held-out")
        if table is None:
            missing.append(f"{model}: {why}")
            continue
        own = table[table["scope"] == "own"]
        tables[model] = own.assign(neuron_set=own["neuron_set"].str.replace("-non-kn", "", regex=False))
    return tables, missing


def by_relation(table: pd.DataFrame) -> pd.DataFrame:
    """Per relation, half, operation and neuron set: ``experiments.held_out.by_half`` with ``change`` in %."""
    frames = [by_half(rows).assign(neuron_set=name) for name, rows in table.groupby("neuron_set", sort=True)]
    out = pd.concat(frames, ignore_index=True)
    return out.assign(change=100 * out["change_ratio"])


def half_effects(tables: dict[str, pd.DataFrame], n_boot: int = VERDICT_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per model, operation, neuron set and half: the mean change of p(answer) over relations (%), its 95%
    BCa interval with relations resampled, and the number of relations."""
    rows = []
    for model, table in tables.items():
        per = by_relation(table)
        for (op, name, half), g in per.groupby(["operation", "neuron_set", "half"], sort=True):
            ci = bootstrap_ci(g, row_mean("change"), "relation", n_boot=n_boot, seed=seed)
            rows.append({"model": model, "operation": op, "neuron_set": name, "half": half, "estimate": ci.estimate,
                         "ci_low": ci.low, "ci_high": ci.high, "n_relations": ci.n_clusters})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def retention(tables: dict[str, pd.DataFrame], n_boot: int = VERDICT_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per model and operation: the knowledge neurons' mean change on each half (%), the held-out one over
    the selection one with its interval (relations resampled, both halves of a relation together), and
    ``claims.retention_verdict``."""
    rows = []
    for model, table in tables.items():
        per = by_relation(table)
        for op in OPERATIONS:
            kn = per[(per["neuron_set"] == KNOWLEDGE) & (per["operation"] == op)]
            ci = bootstrap_ci(kn, group_mean_ratio("change", "half", "held-out", "selection"), "relation", n_boot=n_boot,
                              seed=seed)
            means = kn.groupby("half")["change"].mean()
            rows.append({"model": model, "operation": op, "selection": means.get("selection", float("nan")),
                         "held_out": means.get("held-out", float("nan")), "retained": ci.estimate, "ci_low": ci.low,
                         "ci_high": ci.high, "n_relations": ci.n_clusters, "verdict": retention_verdict(ci)})
    return pd.DataFrame(rows, columns=RETENTION_COLUMNS)


def held_out_controls(tables: dict[str, pd.DataFrame], n_boot: int = VERDICT_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per model, operation and control, on the held-out half: knowledge neurons minus control (points of
    the change of p(answer), paired by relation), its interval over relations and ``beats_control``."""
    rows = []
    for model, table in tables.items():
        per = by_relation(table)
        held = per[per["half"] == "held-out"]
        for op, expected in OPERATIONS.items():
            for control in CONTROL_SETS:
                diffs = paired_differences(held[held["operation"] == op], "change", "relation", "relation", control)
                if diffs.empty:
                    continue
                ci = bootstrap_ci(diffs, row_mean("diff"), "relation", n_boot=n_boot, seed=seed)
                rows.append({"model": model, "operation": op, "control": control, "estimate": ci.estimate,
                             "ci_low": ci.low, "ci_high": ci.high, "n_relations": ci.n_clusters,
                             "verdict": beats_control(ci, expected)})
    return pd.DataFrame(rows, columns=CONTROL_COLUMNS)


def as_figure45(table: pd.DataFrame, half: str) -> pd.DataFrame:
    """The knowledge neurons' rows of one half as suppress-amplify's ``by_relation`` (method ``ig``, scope
    ``own``): what ``claims.paper_claims`` reads for Figures 4-5."""
    per = by_relation(table)
    rows = per[(per["neuron_set"] == KNOWLEDGE) & (per["half"] == half)]
    return rows.drop(columns=["half", "neuron_set", "change"]).assign(method="ig", scope="own").reset_index(drop=True)


_MEANING = {"kept held out": "not selection on the outcome", "lost held out": "mostly selection on the outcome",
            "undetermined": "too uncertain to tell", "borderline": "borderline", "no data": "too few relations to tell"}


def _percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def held_out_reading(retained: pd.DataFrame, controls: pd.DataFrame, model: str, name: str | None = None) -> str:
    """What the held-out run says for one model (called ``name`` in the text), as a sentence: how much of
    each effect held-out prompts keep (``retention``'s rows) and how many held-out control comparisons the
    knowledge neurons beat."""
    name = name or model
    rows = retained[retained["model"] == model]
    if rows.empty:
        return f"the held-out run of {name} is not committed"
    parts = [f"{'suppressing' if r.operation == 'suppress' else 'amplifying'} keeps {_percent(r.retained)} "
             f"[{_percent(r.ci_low)}, {_percent(r.ci_high)}] of its effect"
             + ("" if rows["verdict"].nunique() == 1 else f" ({_MEANING[r.verdict]})") for r in rows.itertuples()]
    sentence = f"on {name} ({rows['n_relations'].max():.0f} relations), " + " and ".join(parts)
    if rows["verdict"].nunique() == 1:
        sentence += f": {_MEANING[rows['verdict'].iloc[0]]}"
    mine = controls[controls["model"] == model]
    won = int((mine["verdict"] == "beats its control").sum())
    if len(mine) == 0:
        return sentence
    if won == len(mine):
        return sentence + f"; on held-out prompts the knowledge neurons beat both matched controls in all {won} comparisons"
    return sentence + f"; on held-out prompts the knowledge neurons beat their control in {won} of {len(mine)} comparisons"


def held_out_headline(retained: pd.DataFrame) -> str:
    """One sentence for every model and operation at once: do held-out prompts keep the effect?"""
    verdicts = set(retained["verdict"])
    if not verdicts:
        return "No held-out run is committed yet."
    if verdicts == {"kept held out"}:
        return ("Knowledge neurons chosen on half of each fact's prompts change p(answer) about as much on the other "
                "half, on every model and in both directions: the effect is not selection on the outcome.")
    if verdicts == {"lost held out"}:
        return ("Knowledge neurons chosen on half of each fact's prompts lose most of their effect on the other half: "
                "much of the effect is selection on the outcome.")
    kept = retained[retained["verdict"] == "kept held out"]
    return (f"Held-out prompts keep the effect in {len(kept)} of {len(retained)} model-and-direction cases; the table "
            "says which, and why the others are not decided.")
