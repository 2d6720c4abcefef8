"""The "Does it hold?" chapter's plumbing: which committed tables each claim reads, and the claims
tables as a reader sees them.

``kn_lib.book.claims`` turns tables into intervals and verdicts; this module fetches those tables
from the ``kn`` command's results (a run that was not made is left out and said so; only
``first_committed``, asked for the largest of several runs, falls back to the next and names it) and
formats the results, so that the chapter shows only the calls a reader would retype.
Nothing here computes a result.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable, Mapping, Sequence, Union

import pandas as pd

from . import EARLIER_DEFINITIONS, BookSample
from ..run.results import ResultsNotFound
from .claims import VERDICTS
from .tables import interval_parts, large_number_text

# what ``claims.paper_claims`` calls each table -> (stage, table) of the kn results
TABLES = {
    "pairs": ("statistics", "pairs"),
    "suppress": ("suppress-amplify", "by_relation"),
    "bingrel": ("bingrel", "by_relation"),
    "update": ("update", "table"),
    "erase": ("erase", "table"),
    "paraphrases": ("update", "paraphrases"),
    "ppl_prompts": ("update", "ppl_prompts"),
    "erase_by_relation": ("erase", "by_relation"),  # not a claim's: the accuracy beside Table 5
}
SIGN_AWARE = {"sign_aware": True, "lambda2": 2.0}  # our variant of the edit (kn update --sign-aware yes --lambda2 2)
# tables made from a stage's results rather than stored as they are: name -> stage
DERIVED = {"update_signed": "update", "bingrel_abs": "bingrel"}
ALL_TABLES = (*TABLES, *DERIVED)
Runs = Union[BookSample, Mapping[str, BookSample]]  # one run, or candidate runs by label, tried in order
# claim tables whose rows no option of the earlier definitions changes, so any run serves (``--relation-mean``
# changes only bingrel's stored summary, which no claim reads; statistics has no such option)
DEFINITION_FREE = ("pairs", "bingrel", "bingrel_abs")


def _bingrel_abs(raw: pd.DataFrame) -> pd.DataFrame:
    """Table 4 by magnitude (the BingRel chapter: signs cancel in gated FFNs), per method."""
    from ..experiments.bingrel_activation import mean_activation

    return pd.concat([
        mean_activation(raw[raw["method"] == m], ["relation", "type"], absolute=True).assign(method=m)
        for m in raw["method"].unique()
    ])


def load_table(sample: BookSample, name: str) -> pd.DataFrame:
    """One claim table of a sample: a stored table (``TABLES``), the sign-aware edit's table (our
    variant) or Table 4 by magnitude. Raises ``ResultsNotFound`` when the run was not made."""
    if name == "update_signed":
        return sample.load("update", "table", params=SIGN_AWARE)
    if name == "bingrel_abs":
        return _bingrel_abs(sample.load("bingrel"))
    if name == "bingrel":  # the official mean: a relation of the run without data counts 0
        return with_absent_relations(sample.load(*TABLES[name]), sample.settings().relation_ids())
    return sample.load(*TABLES[name])


def with_absent_relations(by_relation: pd.DataFrame, relations: Iterable[str]) -> pd.DataFrame:
    """Table 4's per-relation means with a row of activation 0 for every (method, relation, type) of the
    run that has no data, so that a mean over the rows is the official ``8_plot_fig_distant.py`` mean
    (``bingrel_activation.table4_means(..., "official")``); those rows are marked ``padded``, so that the
    claim's interval resamples only the relations with data (``claims._table4_interval``)."""
    from ..experiments.bingrel_activation import TYPES

    rows = [{"method": m, "relation": r, "type": t, "activation": 0.0}
            for m in by_relation["method"].unique() for r in relations for t in TYPES
            if not ((by_relation["method"] == m) & (by_relation["relation"] == r) & (by_relation["type"] == t)).any()]
    padding = pd.DataFrame(rows, columns=["method", "relation", "type", "activation"]).assign(padded=True)
    return pd.concat([by_relation.assign(padded=False), padding], ignore_index=True)


def official_then_earlier(sample: BookSample, earlier: tuple = EARLIER_DEFINITIONS) -> dict[str, BookSample]:
    """A sample's candidate runs for ``load_first``: under the official definitions (the sample as
    given), then under the earlier readings (``earlier`` as its stage options), for results computed
    before the official definitions became the defaults; the group labels say which served."""
    return {"official definitions": sample, "earlier definitions": dataclasses.replace(sample, params=earlier)}


def load_stage(runs: Mapping[str, BookSample], stage: str, table: str | None = None) -> pd.DataFrame:
    """A stage's table from the first of ``runs`` that has it (e.g. ``official_then_earlier``);
    ``ResultsNotFound`` when none has."""
    for sample in runs.values():
        try:
            return sample.load(stage, table)
        except ResultsNotFound:
            continue
    raise ResultsNotFound(f"{stage}: not run for any of {', '.join(runs)}")


def first_run(runs: Mapping[str, BookSample], stage: str, table: str | None = None) -> tuple[str, BookSample]:
    """The first of ``runs`` (e.g. ``official_then_earlier``) whose ``stage`` has rows committed, as
    (label, sample): a chapter reads the whole run from it and names its definitions by the label. A run
    still being computed (no rows yet) is passed over; ``ResultsNotFound`` when none has rows."""
    for label, sample in runs.items():
        try:
            if not sample.load(stage, table).empty:
                return label, sample
        except ResultsNotFound:
            continue
    raise ResultsNotFound(f"{stage}: no rows committed for any of {', '.join(runs)}")


def _stage(name: str) -> str:
    return DERIVED.get(name) or TABLES[name][0]


def load_first(runs: Runs, names: Iterable[str], label: str,
               say: Callable[[str], None] = print) -> dict[str, dict[str, pd.DataFrame]]:
    """The named claim tables, each from the first of ``runs`` that has it committed, grouped by the
    run that served it: {group label: {name: table}}. ``runs`` is one sample (its group is ``label``)
    or candidate samples by label, tried in order (their groups are "``label``, candidate label"),
    e.g. a run under the official definitions, then one under earlier ones. An empty table counts as
    not committed. A table no run has is left out, and ``say`` reports its stage once, so that a page
    states what its verdicts lack."""
    candidates = dict(runs) if isinstance(runs, Mapping) else {"": runs}
    out: dict[str, dict[str, pd.DataFrame]] = {}
    missing = []
    for name in names:
        for sub, sample in candidates.items():
            try:
                table = load_table(sample, name)
            except ResultsNotFound:
                continue
            if table.empty:  # a run still being computed (or with nothing to measure) decides nothing
                continue
            out.setdefault(f"{label}, {sub}" if sub else label, {})[name] = table
            break
        else:
            missing.append(_stage(name) if name not in DERIVED else f"{_stage(name)} ({name})")
    for stage in dict.fromkeys(missing):  # once per stage, however many of its tables are missing
        say(f"{label}: {stage} not run (or nothing committed yet)")
    return out


def matched_tables(designs: Mapping[str, Mapping[str, BookSample]], names: Iterable[str] = ALL_TABLES,
                   say: Callable[[str], None] = print) -> dict[str, dict[str, dict[str, pd.DataFrame]]]:
    """Each design's claim tables (``designs``: design label -> candidate runs by label, tried in order,
    the same candidate labels in every design), each table from the first candidate that every design
    having it has committed, so that two designs meant to differ in one thing (say the refinement rule)
    do not also differ in the definitions their tables were computed under. Where the designs have a
    table only under different definitions, the first design keeps its own and the others go without
    it (its claims are then "not tested" there rather than compared across definitions); ``say`` names
    the table, and each table a design lacks. A table of ``DEFINITION_FREE`` comes from each design's own
    first candidate. Returns {design label: {group label: {name: table}}}, groups as ``load_first``
    makes them."""
    out: dict[str, dict[str, dict[str, pd.DataFrame]]] = {design: {} for design in designs}
    for name in names:
        found: dict[str, dict[str, pd.DataFrame]] = {}  # design -> candidate -> table
        for design, candidates in designs.items():
            for sub, sample in candidates.items():
                try:
                    table = load_table(sample, name)
                except ResultsNotFound:
                    continue
                if not table.empty:
                    found.setdefault(design, {})[sub] = table
        what = name if _stage(name) == name else f"{_stage(name)} ({name})"
        if lacking := [design for design in designs if design not in found]:
            say(f"{what}: not committed for {', '.join(lacking)}")
        if not found:
            continue
        first = next(iter(found.values()))
        shared = [sub for sub in first if all(sub in by_sub for by_sub in found.values())]
        if name in DEFINITION_FREE:
            chosen = {design: next(iter(by_sub)) for design, by_sub in found.items()}
        elif shared:
            chosen = {design: shared[0] for design in found}
        else:
            said = "; ".join(f"{design}: {', '.join(by_sub)}" for design, by_sub in found.items())
            say(f"{what}: no run under the same definitions in every design ({said}); kept for the first only")
            design = next(iter(found))
            chosen = {design: next(iter(found[design]))}
        for design, sub in chosen.items():
            out[design].setdefault(f"{design}, {sub}", {})[name] = found[design][sub]
    return out


def load_tables(runs: Runs, names: Iterable[str], label: str,
                say: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """The named claim tables of ``runs`` (``load_first``) in one dict, whichever run served each."""
    return {name: table for group in load_first(runs, names, label, say).values() for name, table in group.items()}


def stored_tables(runs: Runs, label: str, say: Callable[[str], None] = print) -> dict[str, dict[str, pd.DataFrame]]:
    """Every table ``paper_claims`` reads (``ALL_TABLES``) for one sample, grouped by the run that
    served it (``load_first``): the groups ``claims.claims_by_sample`` takes."""
    return load_first(runs, ALL_TABLES, label, say)


def tables_by_sample(sources: Mapping[str, tuple[Runs, Sequence[str]]],
                     say: Callable[[str], None] = print) -> dict[str, dict[str, pd.DataFrame]]:
    """A sample design for ``claims.claims_by_sample``: ``sources`` maps a label to (runs, names of
    the tables taken from them); each table comes from the first run that has it (``load_first``)."""
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for label, (runs, names) in sources.items():
        out.update(load_first(runs, names, label, say))
    return out


def first_committed(samples: Mapping[str, BookSample], names: Sequence[str],
                    say: Callable[[str], None] = print) -> tuple[str | None, dict[str, pd.DataFrame]]:
    """The first sample of ``samples`` (largest first) with all of ``names`` committed and not empty,
    as (label, tables); (None, {}) when none has them. Each one passed over is reported."""
    for label, sample in samples.items():
        found = load_tables(sample, names, label, say)
        if len(found) == len(names):
            return label, found
    return None, {}


def verdict_slug(verdict: str) -> str:
    """A glue-name part for a verdict: "confirmed, smaller" -> "smaller", "no data" -> "no_data"."""
    return verdict.removeprefix("confirmed, ").replace(" ", "_")


def verdict_counts(claims: pd.DataFrame) -> dict[str, int]:
    """How many rows of a claims table got each verdict (every label of ``VERDICTS``, zeros included),
    keyed by ``verdict_slug``."""
    counts = claims["verdict"].value_counts()
    return {verdict_slug(v): int(counts.get(v, 0)) for v in VERDICTS}


UNIT_TEXT = {"R^2": "R²"}  # a claim's unit as a cell writes it
SHOWN_COLUMNS = ["model", "claim", "where", "sample", "n", "ours [95% CI]", "paper (BERT)", "verdict", "note"]


def claim_cell(estimate: float, low: float, high: float, unit: str = "") -> str:
    """An estimate with its 95% interval and unit in one cell: "-64.6% [-81.0, -38.1]", "0.56 [0.35, 0.90]
    neurons" (``tables.interval_parts``: the same decimals for the three). Where shared decimals would blur
    a number by more than 5% (an interval over orders of magnitude), each gets its own 3 significant
    figures, large ones in words (``tables.large_number_text``: "17.1 billion [7.47 million, 4.08 trillion]");
    never scientific notation; "—" without an estimate."""
    if pd.isna(estimate):
        return "—"
    unit = UNIT_TEXT.get(unit, unit or "")
    values = [float(v) for v in (estimate, low, high)]
    cells = interval_parts(*values)

    def blurred(value: float, cell: str) -> bool:
        if not math.isfinite(value) or value == 0:
            return False
        return abs(value) >= 1e4 or abs(float(cell.replace(",", "")) - value) > 0.05 * abs(value)

    if any(blurred(v, c) for v, c in zip(values, cells)):
        cells = [large_number_text(v) for v in values]
    if unit == "%":
        return f"{cells[0]}% [{cells[1]}, {cells[2]}]"
    return f"{cells[0]} [{cells[1]}, {cells[2]}]" + (f" {unit}" if unit else "")


def paper_cell(value: float, unit: str = "") -> str:
    """The paper's (or a critique's) value with its unit: "-29%", "0.032 R²"."""
    unit = UNIT_TEXT.get(unit, unit or "")
    if pd.isna(value):
        return "—"
    return f"{large_number_text(value)}%" if unit == "%" else large_number_text(value) + (f" {unit}" if unit else "")


def shown_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """A claims table's cells as a reader reads them (``SHOWN_COLUMNS``, those ``claims`` has): the estimate,
    its interval and its unit in one cell, the paper's value with its unit, n the clusters resampled, the
    verdict (which names the direction and the size), the note ("—" when empty). A page picks at most 7 of
    them for ``plots.shown``; the numbers stay in ``claims`` for code."""
    out = pd.DataFrame({
        "model": claims["model"] if "model" in claims else None,
        "claim": claims["claim"], "where": claims["where"],
        "sample": claims["sample"] if "sample" in claims else None,
        "n": claims["n_clusters"].astype("Int64"),
        "ours [95% CI]": [claim_cell(*r) for r in claims[["ours", "ci_low", "ci_high", "unit"]].itertuples(index=False)],
        "paper (BERT)": [paper_cell(v, u) for v, u in zip(claims["paper"], claims["unit"])],
        "verdict": claims["verdict"], "note": claims["note"].replace("", "—").fillna("—") if "note" in claims else "—",
    })
    return out[[c for c in SHOWN_COLUMNS if c not in ("model", "sample") or c in claims]].reset_index(drop=True)


def reach_value(reach: pd.DataFrame, quantity: str, neurons: str, column: str = "percent") -> float:
    """One number of a ``claims.edit_reach`` table (its ``percent``, interval ends, ``n_edits`` or
    ``n_prompts``), NaN where the table lacks it (no edit committed), so that a page's glue never fails."""
    if reach.empty:
        return float("nan")
    sel = reach[(reach["quantity"] == quantity) & (reach["neurons"] == neurons)]
    return float(sel[column].iloc[0]) if len(sel) else float("nan")


def relations_with_kns(suppress: pd.DataFrame) -> pd.DataFrame:
    """Figures 4-5's ``by_relation`` rows of the relations in which at least one fact has knowledge neurons
    (the ``ig`` rows' ``n_facts_with_kn``), every method kept: the sensitivity check of a mean over relations
    in which a relation without any knowledge neuron enters as a change of exactly 0%."""
    ig = suppress[suppress["method"] == "ig"]
    keep = set(ig.loc[ig["n_facts_with_kn"] > 0, "relation"])
    return suppress[suppress["relation"].isin(keep)].reset_index(drop=True)


def figure45_by_relation(suppress: pd.DataFrame) -> pd.DataFrame:
    """Figures 4-5 per relation, the points the claims' relation bootstrap resamples: facts with knowledge
    neurons, and the change of p(answer) (%) when suppressing / amplifying knowledge neurons and the
    activation baseline's neurons, one row per relation (rounded to 3 significant figures by the caller)."""
    own = suppress[suppress["scope"] == "own"]
    wide = own.pivot_table(index="relation", columns=["method", "operation"], values="change_ratio", aggfunc="first") * 100
    facts = own[(own["method"] == "ig") & (own["operation"] == "suppress")].set_index("relation")
    out = pd.DataFrame({"relation": wide.index,
                        "facts with KNs": facts["n_facts_with_kn"].reindex(wide.index).fillna(0).astype(int).to_numpy()})
    for method, label in (("ig", "KNs"), ("activation", "baseline")):
        for op in ("suppress", "amplify"):
            column = (method, op)
            out[f"{op}, {label} (%)"] = wide[column].to_numpy() if column in wide.columns else float("nan")
    return out.reset_index(drop=True)
