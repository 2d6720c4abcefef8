"""The rules that turn a claim's bootstrap interval into a verdict, apart from the claims they judge.

``kn_lib.book.claims`` computes each claim of the paper as an interval (its statistic, resampled by
cluster); this module reads an interval against the paper's value, so that the critiques' and the
held-out prompts' claims are judged by the same rules. ``kn_lib.book.claims`` re-exports every name
here: the chapters import them from there.

Every verdict rests on a BCa interval of ``VERDICT_BOOT`` resamples with the small-sample expansion
(``kn_lib.book.bootstrap``), and on the Monte Carlo error of its ends, so that it does not depend on the
seed: where moving an end by its Monte Carlo error could change the reading, the verdict is
**borderline**, for every seed (``tests/test_claims.py`` draws 40).

An **effect claim** ("suppressing KNs lowers p") is read twice against our interval, in the paper's
direction (``effect = paper - null``; ``null`` is "no effect", 0 unless the claim compares with
another value):

* ``direction``: **confirmed** when the interval excludes the null on the paper's side, **not
  detected** when it contains the null, **reversed** when it excludes it on the other side;
* ``size``, an equivalence test against the paper's effect e: **same size** when the whole interval
  lies within e x (1 ± ``EQUIVALENCE_MARGIN``) (two one-sided tests at 2.5% each), else **larger** /
  **smaller** when it lies wholly beyond / short of e, else **undetermined**: a wide interval that
  reaches e is no evidence of the paper's size (containment would reward it).

The verdict: **holds** only when the direction is confirmed *and* the size is the same;
**confirmed, smaller** / **larger** / **size undetermined** otherwise; **not detected**; **reversed**.

A **ceiling claim** ("other relations' perplexity stays similar": the paper reports a small side
effect and claims no more than that) is **within ceiling** when the interval's upper end is at most
the paper's value, **exceeded** when its lower end lies above it, **inconclusive** when the interval
contains it. It is counted apart from "holds": an interval [0, 0] is within any ceiling, however
little power it had. Its ``size`` says where the interval lies against the paper's value.

A **retention** (``retention_verdict``: the effect on held-out prompts over the effect on the prompts
the neurons were chosen on) is **kept held out** when its interval's lower end is at least
1 − ``EQUIVALENCE_MARGIN``, **lost held out** when its upper end lies below that.

Every kind is **no data** when fewer than ``MIN_CLUSTERS`` clusters were resampled
(``HEAVY_TAIL_MIN_CLUSTERS`` for the perplexity changes of Table 5) or nothing could be estimated.

Many intervals make some false verdicts likely: ``holm_family`` adjusts the declared primary family
(the paper's metrics on the main model) with Holm's step-down procedure, and ``expected_false`` says how
many chance confirmations to expect among the rest.

A claim row also says whether it tests the paper's own metric or one of our variants (``kind``), so
that the two are tallied apart.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from .bootstrap import Interval, at_level, holm, p_value


MIN_CLUSTERS = 10  # fewer clusters (relations, facts or edits resampled) than this: no verdict
# a statistic with heavy tails (a perplexity change: one relation can weigh 1000 times another) under-covers
# even with the small-sample BCa below 20 clusters (tests/test_bootstrap.py): its claims need this many
HEAVY_TAIL_MIN_CLUSTERS = 20
EQUIVALENCE_MARGIN = 0.5  # "same size": the whole interval within the paper's effect x (1 ± this)
NOT_APPLICABLE = "—"  # direction of a ceiling claim; direction and size without data
BORDERLINE = "borderline"
DIRECTIONS = ("confirmed", "not detected", "reversed", BORDERLINE)
SIZES = ("smaller", "same size", "larger", "undetermined", BORDERLINE)
EFFECT_VERDICTS = ("holds", "confirmed, smaller", "confirmed, larger", "confirmed, size undetermined", "not detected", "reversed",
                   BORDERLINE, "no data")
CEILING_VERDICTS = ("within ceiling", "exceeded", "inconclusive", BORDERLINE, "no data")
VERDICTS = tuple(dict.fromkeys(EFFECT_VERDICTS + CEILING_VERDICTS))  # every label, agreement first
PAPER_METRIC, OUR_VARIANT = "paper's metric", "our variant"


def _no_data(ours: Interval, min_clusters: int = MIN_CLUSTERS) -> bool:
    if not (np.isfinite(ours.estimate) and np.isfinite(ours.low) and np.isfinite(ours.high)):
        return True
    return ours.n_clusters < min_clusters


def _towards_paper(paper: float, ours: Interval, null: float) -> tuple[float, float, float, float, float]:
    """The interval's ends, their Monte Carlo errors and the paper's effect on an axis where "no effect" is
    0 and the paper's effect is positive, so that one rule serves claims of either sign."""
    effect = paper - null
    if effect == 0:
        raise ValueError("the paper's value equals the null: no direction to test")
    if effect > 0:
        return ours.low - null, ours.high - null, ours.mc_low, ours.mc_high, effect
    return null - ours.high, null - ours.low, ours.mc_high, ours.mc_low, -effect


BORDERLINE_FACTOR = 2.0  # a boundary within this many Monte Carlo errors (99% bands) of an end: borderline


def _robust(category: Callable[[float, float], str], low: float, high: float, mc_low: float, mc_high: float) -> str:
    """``category(low, high)``, or "borderline" when moving either end by ``BORDERLINE_FACTOR`` times its
    Monte Carlo error could change it. Another seed moves an end by about a third of one error (the error
    is a 99% band's half-width), so no seed's end crosses a boundary that the doubled band does not reach:
    the verdict is the same for every seed."""
    mc_low, mc_high = BORDERLINE_FACTOR * mc_low, BORDERLINE_FACTOR * mc_high
    found = {category(l, h) for l in (low - mc_low, low, low + mc_low) for h in (high - mc_high, high, high + mc_high) if l <= h}
    return found.pop() if len(found) == 1 else BORDERLINE


def _direction_of(low: float, high: float) -> str:
    return "reversed" if high < 0 else ("confirmed" if low > 0 else "not detected")


def _size_of(effect: float, margin: float) -> Callable[[float, float], str]:
    def category(low: float, high: float) -> str:
        if effect * (1 - margin) <= low and high <= effect * (1 + margin):
            return "same size"
        return "larger" if low > effect else ("smaller" if high < effect else "undetermined")

    return category


def direction(paper: float, ours: Interval, null: float = 0.0, min_clusters: int = MIN_CLUSTERS) -> str:
    """Does our interval exclude "no effect" on the paper's side (confirmed), contain it (not detected),
    or exclude it on the other side (reversed)? "borderline" when an end lies within its Monte Carlo
    error of the null; "—" without data."""
    low, high, mc_low, mc_high, _ = _towards_paper(paper, ours, null)
    if _no_data(ours, min_clusters):
        return NOT_APPLICABLE
    return _robust(_direction_of, low, high, mc_low, mc_high)


def size(paper: float, ours: Interval, null: float = 0.0, margin: float = EQUIVALENCE_MARGIN,
         min_clusters: int = MIN_CLUSTERS) -> str:
    """Our interval against the paper's effect e (in the paper's direction), an equivalence test: **same
    size** when the whole interval lies within e x (1 ± ``margin``) (TOST at 2.5% a side), else **larger**
    / **smaller** when it lies wholly beyond / short of e, else **undetermined** (too wide to tell).
    "borderline" within Monte Carlo error of a boundary; "—" without data."""
    low, high, mc_low, mc_high, effect = _towards_paper(paper, ours, null)
    if _no_data(ours, min_clusters):
        return NOT_APPLICABLE
    return _robust(_size_of(effect, margin), low, high, mc_low, mc_high)


def verdict(paper: float, ours: Interval, null: float = 0.0, margin: float = EQUIVALENCE_MARGIN,
            min_clusters: int = MIN_CLUSTERS) -> str:
    """The verdict of an effect claim (module docstring): "holds" only when the direction is confirmed
    and the size is the paper's within the margin; otherwise it names what differs."""
    found = direction(paper, ours, null, min_clusters)
    if found == NOT_APPLICABLE:
        return "no data"
    if found != "confirmed":
        return found
    how_big = size(paper, ours, null, margin, min_clusters)
    if how_big == BORDERLINE:
        return BORDERLINE
    return {"same size": "holds", "undetermined": "confirmed, size undetermined"}.get(how_big, f"confirmed, {how_big}")


def _ceiling_of(paper: float) -> Callable[[float, float], str]:
    return lambda low, high: "within ceiling" if high <= paper else ("exceeded" if low > paper else "inconclusive")


def ceiling_verdict(paper: float, ours: Interval, min_clusters: int = MIN_CLUSTERS) -> str:
    """The verdict of a ceiling claim: is our side effect at most the paper's (module docstring)?"""
    if _no_data(ours, min_clusters):
        return "no data"
    return _robust(_ceiling_of(paper), ours.low, ours.high, ours.mc_low, ours.mc_high)


RETENTION_VERDICTS = ("kept held out", "lost held out", "undetermined", BORDERLINE, "no data")


def _retention_of(margin: float) -> Callable[[float, float], str]:
    keep = 1 - margin
    return lambda low, high: "kept held out" if low >= keep else ("lost held out" if high < keep else "undetermined")


def retention_verdict(ours: Interval, margin: float = EQUIVALENCE_MARGIN, min_clusters: int = MIN_CLUSTERS) -> str:
    """Does an effect survive on prompts its neurons were not chosen on? ``ours`` is the held-out effect
    over the in-sample one (1: the same). A non-inferiority test with the margin of "same size": **kept
    held out** when the interval's lower end is at least 1 − ``margin``, **lost held out** when its upper
    end lies below it, else **undetermined**; "borderline" within Monte Carlo error of the boundary."""
    if _no_data(ours, min_clusters):
        return "no data"
    return _robust(_retention_of(margin), ours.low, ours.high, ours.mc_low, ours.mc_high)


def _ceiling_size(paper: float, ours: Interval, min_clusters: int = MIN_CLUSTERS) -> str:
    """The size column of a ceiling claim: our interval against the paper's value, on its own scale."""
    if _no_data(ours, min_clusters):
        return NOT_APPLICABLE
    return "smaller" if ours.high < paper else ("larger" if ours.low > paper else "contains it")


CLAIM_COLUMNS = ["claim", "where", "kind", "paper", "ours", "ci_low", "ci_high", "null", "unit", "verdict", "direction",
                 "size", "n_clusters", "test", "note", "p_value", "mc_error", "interval"]  # the fields of ``claim_row``, in order


def claim_row(
    claim: str, where: str, paper: float, ours: Interval, null: float = 0.0, unit: str = "", kind: str = PAPER_METRIC,
    ceiling: bool = False, note: str = "", min_clusters: int = MIN_CLUSTERS,
) -> dict:
    """One row of the claims table: the paper's number, ours with its interval and n, the verdict, and
    the two readings it names (``direction``, ``size``; module docstring); ``p_value`` (an effect claim's
    bootstrap p against its null, for Holm), the larger Monte Carlo error of the two ends and the
    ``Interval`` itself (its draws: intervals at other levels)."""
    if ceiling:
        judged = {"verdict": ceiling_verdict(paper, ours, min_clusters), "direction": NOT_APPLICABLE,
                  "size": _ceiling_size(paper, ours, min_clusters)}
    else:
        judged = {"verdict": verdict(paper, ours, null, min_clusters=min_clusters),
                  "direction": direction(paper, ours, null, min_clusters),
                  "size": size(paper, ours, null, min_clusters=min_clusters)}
    return {
        "claim": claim, "where": where, "kind": kind, "paper": paper, "ours": ours.estimate, "ci_low": ours.low,
        "ci_high": ours.high, "null": null, "unit": unit, **judged,
        "n_clusters": ours.n_clusters, "test": "ceiling" if ceiling else "effect", "note": note,
        "p_value": float("nan") if ceiling else p_value(ours, null), "mc_error": max(ours.mc_low, ours.mc_high), "interval": ours,
    }


def holm_family(claims: pd.DataFrame, family: pd.Series, alpha: float = 0.05) -> pd.DataFrame:
    """The claims of a declared family (``family``: a boolean mask, e.g. the paper's metrics on the main
    model) with Holm-adjusted p-values (``p_holm``) and intervals (``holm_low``, ``holm_high``: each at the
    level the step-down procedure reads it at), and whether the direction is still confirmed after the
    adjustment (``holm_confirmed``). Ceiling claims and those without data are left out."""
    rows = claims[family & (claims["test"] == "effect") & (claims["verdict"] != "no data")].copy()
    adjusted, levels = holm(rows["p_value"].to_numpy(), alpha)
    rows["p_holm"], rows["holm_level"] = adjusted, levels
    wide = [at_level(iv, lv) if np.isfinite(lv) else iv for iv, lv in zip(rows["interval"], levels)]
    rows["holm_low"], rows["holm_high"] = [w.low for w in wide], [w.high for w in wide]
    rows["holm_confirmed"] = [direction(p, w, n) == "confirmed" for p, w, n in zip(rows["paper"], wide, rows["null"])]
    return rows


def expected_false(claims: pd.DataFrame, alpha: float = 0.05) -> float:
    """How many of these effect claims' intervals would exclude their null by chance if no effect were
    real: alpha x their number (a bound on the false "confirmed" among intervals outside the family)."""
    return alpha * int(((claims["test"] == "effect") & (claims["verdict"] != "no data")).sum())
