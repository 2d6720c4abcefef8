"""Does a claim of the paper hold here? Bootstrap confidence intervals and a three-way verdict.

The book's "Does it hold?" chapter puts each claim of Dai et al. (2022) next to our estimate with a
95% bootstrap interval. Resampling is by *cluster* where observations are not independent: prompts of
one fact, facts of one relation. A relation-averaged number (Figures 4-5) is resampled over relations,
a per-fact one over facts, so the interval reflects the variation the paper's average hides.

Verdicts compare our interval with the paper's value and with the null (no effect, ``null``):

* **holds**: the interval lies on the paper's side of the null and reaches at least half of the
  paper's effect (``effect = paper - null``): same direction, comparable size;
* **weaker**: same direction as the paper by the point estimate, but the interval touches the null
  or stays below half the paper's effect;
* **reversed**: the point estimate is on the other side of the null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

VERDICTS = ("holds", "weaker", "reversed")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n_clusters: int
    n_boot: int
    level: float
    seed: int


def bootstrap_ci(
    frame: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float],
    cluster: str | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic(frame)``.

    ``cluster`` names a column whose groups are resampled whole, with replacement (rows when None).
    Resamples where the statistic is undefined (NaN) are dropped; an empty frame gives a NaN interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if frame.empty:
        return Interval(float("nan"), float("nan"), float("nan"), 0, n_boot, level, seed)
    estimate = float(statistic(frame))
    rng = np.random.default_rng(seed)
    if cluster is None:
        groups = [np.array([i]) for i in range(len(frame))]
    else:
        codes, _ = pd.factorize(frame[cluster])
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        groups = np.split(order, bounds)
    k = len(groups)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, k, size=k)
        rows = np.concatenate([groups[i] for i in pick])
        v = float(statistic(frame.iloc[rows]))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return Interval(estimate, float("nan"), float("nan"), k, n_boot, level, seed)
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), k, n_boot, level, seed)


def verdict(paper: float, ours: Interval, null: float = 0.0) -> str:
    """holds / weaker / reversed (see the module docstring) for a paper value against our interval."""
    effect = paper - null
    if effect == 0:
        raise ValueError("the paper's value equals the null: no direction to test")
    sign = float(np.sign(effect))
    est = sign * (ours.estimate - null)  # in the paper's direction: > 0 agrees with the paper
    ends = sorted((sign * (ours.low - null), sign * (ours.high - null)))
    low, high = ends
    if not np.isfinite(est) or est <= 0:
        return "reversed"
    if low > 0 and high >= 0.5 * abs(effect):
        return "holds"
    return "weaker"


def claim_row(claim: str, where: str, paper: float, ours: Interval, null: float = 0.0, unit: str = "") -> dict:
    """One row of the claims table: the paper's number, ours with its interval, and the verdict."""
    return {
        "claim": claim, "where": where, "paper": paper, "ours": ours.estimate, "ci_low": ours.low, "ci_high": ours.high,
        "null": null, "unit": unit, "verdict": verdict(paper, ours, null), "n_clusters": ours.n_clusters,
    }
