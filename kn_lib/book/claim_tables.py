"""The "Does it hold?" chapter's plumbing: which committed tables each claim reads, and the claims
tables as a reader sees them.

``kn_lib.book.claims`` turns tables into intervals and verdicts; this module fetches those tables
from the ``kn`` command's results (a run that was not made is left out and said so, never replaced
by another) and formats the results, so that the chapter shows only the calls a reader would retype.
Nothing here computes a result.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd

from . import BookSample, paper
from ..run.results import ResultsNotFound
from .claims import VERDICTS

# what ``claims.paper_claims`` calls each table -> (stage, table) of the kn results
TABLES = {
    "pairs": ("statistics", "pairs"),
    "suppress": ("suppress-amplify", "by_relation"),
    "bingrel": ("bingrel", "by_relation"),
    "update": ("update", "table"),
    "erase": ("erase", "table"),
    "paraphrases": ("update", "paraphrases"),
    "ppl_prompts": ("update", "ppl_prompts"),
}
SIGN_AWARE = {"sign_aware": True, "lambda2": 2.0}  # our variant of the edit (kn update --sign-aware yes --lambda2 2)


def load_tables(sample: BookSample, names: Iterable[str], label: str,
                say: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """The named claim tables (``TABLES``) of one sample. An experiment not run for it is left out and
    ``say`` reports it, so that a page states what its verdicts lack."""
    out, missing = {}, []
    for name in names:
        stage, table = TABLES[name]
        try:
            out[name] = sample.load(stage, table)
        except ResultsNotFound:
            missing.append(stage)
    for stage in dict.fromkeys(missing):  # once per stage, however many of its tables are missing
        say(f"{label}: {stage} not run")
    return out


def stored_tables(sample: BookSample, say: Callable[[str], None] = print) -> dict[str, pd.DataFrame]:
    """Every table ``paper_claims`` reads for one sample: ``TABLES``, the sign-aware edit (our variant)
    and Table 4 by magnitude (the BingRel chapter: signs cancel in gated FFNs). Missing runs are left
    out and reported through ``say``."""
    from ..experiments.bingrel_activation import mean_activation

    label = f"{sample.model} ({sample.share_rule} rule)"
    out = load_tables(sample, TABLES, label, say)
    try:
        out["update_signed"] = sample.load("update", "table", params=SIGN_AWARE)
    except ResultsNotFound:
        say(f"{label}: sign-aware update not run")
    if "bingrel" in out:
        raw = sample.load("bingrel")
        out["bingrel_abs"] = pd.concat([
            mean_activation(raw[raw["method"] == m], ["relation", "type"], absolute=True).assign(method=m)
            for m in raw["method"].unique()
        ])
    return out


def tables_by_sample(sources: Mapping[str, tuple[BookSample, Sequence[str]]],
                     say: Callable[[str], None] = print) -> dict[str, dict[str, pd.DataFrame]]:
    """A sample design for ``claims.claims_by_sample``: ``sources`` maps a label to (sample, names of
    the tables taken from it); each label gets the tables of its sample that are committed."""
    return {label: load_tables(sample, names, f"{sample.model}, {label}", say)
            for label, (sample, names) in sources.items()}


def first_committed(samples: Mapping[str, BookSample], names: Sequence[str],
                    say: Callable[[str], None] = print) -> tuple[str | None, dict[str, pd.DataFrame]]:
    """The first sample of ``samples`` (largest first) with all of ``names`` committed, as (label,
    tables); (None, {}) when none has them. Each one passed over is reported through ``say``."""
    for label, sample in samples.items():
        found = load_tables(sample, names, f"{sample.model}, {label}", say)
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


def _interval(estimate: float, low: float, high: float) -> str:
    return "" if pd.isna(estimate) else f"{estimate:.3g} [{low:.3g}, {high:.3g}]"


def shown_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """A claims table as a reader wants it: the interval in one cell, n beside it, the verdict and the
    two readings it names (direction, size), readable headers."""
    out = claims.assign(ours_ci=[_interval(*r) for r in claims[["ours", "ci_low", "ci_high"]].itertuples(index=False)])
    columns = ["claim", "where", "unit", "paper", "ours_ci", "n_clusters", "direction", "size", "verdict", "note"]
    if "sample" in claims:
        columns.append("sample")
    out["paper"] = [f"{v:.3g}" for v in out["paper"]]
    return out[columns].rename(columns={
        "paper": f"paper ({paper.MODEL})", "ours_ci": "ours, 95% CI", "n_clusters": "n (clusters)",
        "size": "size vs paper"})


def shown_designs(designs: pd.DataFrame, before: str = "before", after: str = "after") -> pd.DataFrame:
    """A ``claims.compare_designs`` table as a reader wants it: per claim and side, n, the estimate with
    its interval and the verdict, then whether both sides have data, whether the verdict changed, and
    the width ratio. ``before`` and ``after`` name the two designs in the headers."""
    out = pd.DataFrame({"claim": designs["claim"]})
    if "model" in designs:
        out.insert(0, "model", designs["model"])
    if "sample" in designs:
        out[f"{after}: sample"] = designs["sample"]
    for side, name in (("before", before), ("after", after)):
        out[f"{name}: n"] = designs[f"n_clusters_{side}"].astype("Int64")
        out[f"{name}: ours, 95% CI"] = [_interval(*r) for r in designs[
            [f"ours_{side}", f"ci_low_{side}", f"ci_high_{side}"]].itertuples(index=False)]
        out[f"{name}: verdict"] = designs[f"verdict_{side}"].fillna("not tested")
    out["both have data"] = designs["both_data"]
    out["verdict changed"] = designs["verdict_changed"]
    out[f"CI width {after} / {before}"] = designs["width_ratio"]
    return out


def reach_value(reach: pd.DataFrame, quantity: str, neurons: str, column: str = "percent") -> float:
    """One number of a ``claims.edit_reach`` table (its ``percent``, interval ends, ``n_edits`` or
    ``n_prompts``), NaN where the table lacks it (no edit committed), so that a page's glue never fails."""
    if reach.empty:
        return float("nan")
    sel = reach[(reach["quantity"] == quantity) & (reach["neurons"] == neurons)]
    return float(sel[column].iloc[0]) if len(sel) else float("nan")
