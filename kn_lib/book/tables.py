"""Small reshapes of committed results that the chapters show or glue: plumbing kept out of the pages.

Every function takes tables the ``kn`` command wrote (or the paper's numbers in ``kn_lib.book.paper``)
and returns a tidy table or a short string; none computes a new result.
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd

from . import paper
from .table_style import number_text


def relation_list(frame: pd.DataFrame, value: str, labels: Mapping[str, str], fmt: str = "{:.0%}") -> str:
    """The rows of ``frame``, in its order, as "P413 (position played on team, 10%), P264 (...)":
    each row's ``relation``, its label from ``labels`` and its ``value`` formatted with ``fmt``."""
    return ", ".join(f"{r} ({labels.get(r, r)}, {fmt.format(v)})" for r, v in zip(frame["relation"], frame[value]))


_LARGE_NUMBERS = ((1e15, "quadrillion"), (1e12, "trillion"), (1e9, "billion"), (1e6, "million"))


def large_number_text(value: float) -> str:
    """A measurement that may be astronomically large, for a table cell or a sentence, in 3 significant
    figures: ``number_text`` below 10,000, then rounded ("268,000"), from a million on with a word ("1.76
    billion", "8.9 trillion"); never scientific notation nor a 13-digit number; "∞" for an infinite value,
    "—" when missing. Not for counts, which ``number_text`` writes in full."""
    if value is None or pd.isna(value):
        return "—"
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if abs(value) < 1e4:
        return number_text(value)
    value = round(value, 2 - math.floor(math.log10(abs(value))))  # 3 significant figures: 268,340 -> 268,000
    for size, word in _LARGE_NUMBERS:
        if abs(value) >= size:
            scaled = value / size
            text = f"{scaled:.3g}"
            return f"{scaled:,.0f} {word}" if "e" in text else f"{text} {word}"
    return f"{value:,.0f}"


def interval_text(estimate: float, low: float, high: float, signed: bool = False) -> str:
    """An estimate and its interval in one cell, "-64.6 [-81.0, -38.1]": the three with the same decimals,
    as many as give the largest of them 3 significant figures (none from 100 on, and from 10,000 on rounded
    to the largest's third figure: "20,100 [8,200, 42,200]"; thousands separated);
    ``signed`` puts a "+" before positive numbers. A missing number reads "—"."""
    estimate_text, low_text, high_text = interval_parts(estimate, low, high, signed)
    return f"{estimate_text} [{low_text}, {high_text}]"


def interval_parts(estimate: float, low: float, high: float, signed: bool = False) -> list[str]:
    """The three numbers of ``interval_text``, each as that cell writes it (the shared decimals)."""
    values = [float(v) if v is not None and not pd.isna(v) else math.nan for v in (estimate, low, high)]
    finite = [abs(v) for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    decimals = 0 if top == 0 else min(2 - math.floor(math.log10(top)), 6)
    if 0 > decimals > -2:  # 100 to 9,999: whole numbers, as number_text writes them
        decimals = 0

    def text(v: float) -> str:
        if math.isnan(v):
            return "—"
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        v = round(v, decimals) + 0.0  # no "-0.0"; from 10,000 on, rounded to 3 figures: 42,233 -> 42,200
        return f"{v:{'+' if signed and v != 0 else ''},.{max(decimals, 0)}f}"

    return [text(v) for v in values]


INTERVAL = "estimate, 95% CI"  # the column ``with_interval`` writes


def with_interval(frame: pd.DataFrame, signed: bool = False, column: str = INTERVAL, n_unit: str | None = None) -> pd.DataFrame:
    """An effects table (``estimate``, ``ci_low``, ``ci_high``) as a page shows it: the three in one cell,
    "-64.6 [-81.0, -38.1]" (``interval_text``; "—" where there is no estimate), in the place of
    ``estimate``. With ``n_unit`` (a column naming each row's unit, as ``grammar_vs_facts``'s ``unit``), ``n``
    reads "12 groups" and the unit column goes. Only for a table about to be shown: code reads the numbers."""
    out = frame.reset_index(drop=True)
    cells = [interval_text(e, lo, hi, signed) for e, lo, hi in zip(out["estimate"], out["ci_low"], out["ci_high"])]
    out = out.drop(columns=["ci_low", "ci_high"])
    out.insert(out.columns.get_loc("estimate"), column, cells)
    out = out.drop(columns=["estimate"])
    if n_unit is not None:
        out["n"] = [f"{int(n):,} {unit}" if pd.notna(n) else "—" for n, unit in zip(out["n"], out[n_unit])]
        out = out.drop(columns=[n_unit])
    return out


def claim_table(claims: pd.DataFrame, keep: list[str], signed: bool = True) -> pd.DataFrame:
    """``controls.control_claims`` rows as a page shows them: the columns ``keep`` (e.g. model, measure,
    control), then ``difference`` (the estimate, knowledge neurons minus control, with its 95% interval in
    one cell: ``with_interval``), ``n`` (the number of clusters, relations or erased relations) and the
    ``verdict``."""
    return with_interval(claims[[*keep, "estimate", "ci_low", "ci_high", "n", "verdict"]], signed, column="difference")


def percent_change(before: float, after: float) -> float:
    """Relative change from ``before`` to ``after``, in percent."""
    return 100 * (after - before) / before


def paper_erase_changes(erase: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """The paper's Table 5 as relative perplexity changes: one row per (relation, prompts), prompts being
    ``erased`` (the relation's own) or ``other``, with ``change`` in percent."""
    erase = paper.ERASE if erase is None else erase
    return pd.DataFrame([
        {"relation": rel, "prompts": scope, "change": percent_change(v[f"{scope}_before"], v[f"{scope}_after"])}
        for rel, v in erase.items() for scope in ("erased", "other")
    ])


def erase_changes(by_relation: pd.DataFrame, ours: str, theirs: str = "paper",
                  erase: Mapping[str, Mapping[str, float]] | None = None, same_relations: bool = True) -> pd.DataFrame:
    """Table 5's perplexity changes, ours and the paper's, stacked for a figure: one row per (source,
    relation, prompts) with ``change`` in percent. ``by_relation`` is the erase stage's ``by_relation``
    table; the paper's rows come first and keep only the relations we erased too (``same_relations``;
    False: all four of the paper's, for relations the two erase apart)."""
    mine = by_relation.melt(id_vars="relation", value_vars=["erased_ppl_change", "other_ppl_change"],
                            var_name="prompts", value_name="change")
    mine["prompts"] = mine["prompts"].str.replace("_ppl_change", "", regex=False)
    theirs_rows = paper_erase_changes(erase)
    if same_relations:
        theirs_rows = theirs_rows[theirs_rows["relation"].isin(set(by_relation["relation"]))]
    return pd.concat([theirs_rows.assign(source=theirs), mine.assign(source=ours)], ignore_index=True)[
        ["source", "relation", "prompts", "change"]]


def table5(by_relation: pd.DataFrame, erase: Mapping[str, Mapping[str, float]] | None = None,
           paper_columns: bool = True) -> pd.DataFrame:
    """Table 5 side by side: per erased relation the paper's and our perplexities "before → after" (on
    the relation's own prompts and the other relations'; 3 significant figures, ``large_number_text``,
    "—" where the paper did not erase the relation), and our top-1 accuracy before → after. Without
    ``paper_columns`` (relations the paper did not erase): ours only, with the changes in %."""
    erase = paper.ERASE if erase is None else erase

    def arrow(before: float, after: float) -> str:
        return f"{large_number_text(before)} → {large_number_text(after)}"

    rows = []
    for _, r in by_relation.iterrows():
        p = erase.get(r["relation"])
        row = {"relation": r["relation"]}
        for scope, name in (("erased", "erased"), ("other", "other")) if paper_columns else ():
            row[f"paper: {name} PPL before → after"] = (
                arrow(p[f"{scope}_before"], p[f"{scope}_after"]) if p else "—")
        for scope, name in (("erased", "erased"), ("other", "other")):
            row[f"ours: {name} PPL before → after"] = arrow(r[f"{scope}_ppl_before"], r[f"{scope}_ppl_after"])
        if not paper_columns:
            for scope, name in (("erased", "erased"), ("other", "other")):
                row[f"ours: {name} PPL change (%)"] = large_number_text(r[f"{scope}_ppl_change"])
        row["ours: erased accuracy before → after"] = (
            f"{r['erased_accuracy_before']:.0%} → {r['erased_accuracy_after']:.0%}")
        rows.append(row)
    return pd.DataFrame(rows)


UPDATE_OUTCOMES = ("new answer (success)", "other answer", "unchanged")


def update_outcomes(table: pd.DataFrame, by: str = "run") -> pd.DataFrame:
    """What each edited prompt answers after the edit, counted per ``by`` (e.g. the run): one row per
    (``by``, outcome) with ``edits``, outcomes in ``UPDATE_OUTCOMES`` order (zero counts kept).
    ``table`` is the update stage's table, one row per edit with booleans ``success`` (new answer is
    top-1) and ``changed`` (old answer no longer top-1)."""
    outcome = pd.Series(UPDATE_OUTCOMES[2], index=table.index)
    outcome[table["changed"].astype(bool)] = UPDATE_OUTCOMES[1]
    outcome[table["success"].astype(bool)] = UPDATE_OUTCOMES[0]
    counts = pd.crosstab(table[by], pd.Categorical(outcome, categories=UPDATE_OUTCOMES), dropna=False)
    counts = counts.reindex(list(dict.fromkeys(table[by])))
    return counts.rename_axis(index=by, columns="outcome").stack().rename("edits").reset_index()


def erase_scopes(table: pd.DataFrame) -> pd.DataFrame:
    """Table 5 per erased relation on three sets of prompts of an ``erase`` table: the erased relation's
    every fact (``erased, all facts``: the official scope), its facts of the analysed sample (``erased,
    sample``: on a known-facts run, the facts the model knows), and the other relations' (``other``).
    Columns: n_prompts, perplexity before/after and its change in percent, top-1 accuracy before/after."""
    from ..experiments.evaluation import perplexity

    rows = []
    for relation, group in table.groupby("erased_relation", sort=False):
        erased = group[group["scope"] == "erased"]
        scopes = {"erased, all facts": erased, "other": group[group["scope"] == "other"]}
        if "in_sample" in group.columns:
            scopes["erased, sample"] = erased[erased["in_sample"].astype(bool)]
        for scope, sel in scopes.items():
            if sel.empty:
                continue
            before, after = perplexity(sel["p_before"].tolist()), perplexity(sel["p_after"].tolist())
            rows.append({"relation": relation, "prompts": scope, "n_prompts": len(sel), "n_facts": sel["fact_id"].nunique(),
                         "ppl_before": before, "ppl_after": after, "ppl_change": percent_change(before, after),
                         "accuracy_before": float(sel["correct_before"].mean()),
                         "accuracy_after": float(sel["correct_after"].mean())})
    return pd.DataFrame(rows)


SCOPE_ORDER = ("erased, sample", "erased, all facts", "other")


def erase_scope_means(scopes: pd.DataFrame) -> pd.DataFrame:
    """``erase_scopes`` rows (with a ``model`` column) as one row per (model, prompts): the mean over
    erased relations of the perplexity change and of the top-1 accuracy before and after, with the number
    of relations and the prompts and facts they sum to (Table 5 averages relations, so does this)."""
    columns = ["model", "prompts", "n_relations", "n_prompts", "n_facts", "accuracy_before", "accuracy_after", "ppl_change"]
    if scopes.empty:
        return pd.DataFrame(columns=columns)
    out = (scopes.groupby(["model", "prompts"], sort=False)
           .agg(n_relations=("relation", "nunique"), n_prompts=("n_prompts", "sum"), n_facts=("n_facts", "sum"),
                accuracy_before=("accuracy_before", "mean"), accuracy_after=("accuracy_after", "mean"),
                ppl_change=("ppl_change", "mean"))
           .reset_index())
    out["order"] = out["prompts"].map({s: i for i, s in enumerate(SCOPE_ORDER)})
    out["first"] = out["model"].map({m: i for i, m in enumerate(dict.fromkeys(scopes["model"]))})  # models as given
    return out.sort_values(["first", "order"], kind="stable", ignore_index=True)[columns]


def known_erase_scopes(runs: Mapping[str, int | None], method: str = "ig") -> tuple[pd.DataFrame, list[str]]:
    """``erase_scopes`` of the knowledge neurons' rows of each model's known-facts erase (``runs``: model ->
    facts per relation of its run, as ``controls.CONTROL_RUNS``; read from ``controls.control_sample``),
    stacked with a ``model`` column, and a line for each model without such rows (``BookSample.committed``:
    not run, how far it got, or nothing could be done)."""
    from .controls import control_sample

    frames, lines = [], []
    for model, size in runs.items():
        table, status = control_sample(model, "erase", size).committed("erase")
        rows = table[table["method"] == method] if table is not None else None
        if rows is None or rows.empty:
            lines.append(f"{model}: erase on known facts " + (status or f"has no {method} rows yet"))
            continue
        frames.append(erase_scopes(rows).assign(model=model))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "relation", "prompts"])), lines
