"""Does a claim of the paper hold here? Bootstrap confidence intervals and a verdict that follows from them.

The book's "Does it hold?" chapter puts each claim of Dai et al. (2022) next to our estimate with a
95% bootstrap interval. Resampling is by *cluster*, the unit the statistic averages over: a
relation-averaged number (Figures 4-5, Tables 4 and 5) is resampled over relations, a per-fact or
per-edit one (Table 6) over facts, so the interval reflects the variation the paper's average hides.
A cluster drawn twice counts twice (``bootstrap_ci``): merging the copies, as a statistic that groups by
the cluster would, averages the distinct clusters drawn and gives too narrow an interval.

An **effect claim** ("suppressing KNs lowers p") is read twice against our interval, in the paper's
direction (``effect = paper - null``; ``null`` is "no effect", 0 unless the claim compares with
another value):

* ``direction``: **confirmed** when the interval excludes the null on the paper's side, **not
  detected** when it contains the null, **reversed** when it excludes the null on the other side;
* ``size`` against the paper's value: **smaller** when the whole interval lies short of it (in the
  paper's direction), **consistent** when the interval contains it, **larger** when the whole
  interval lies beyond it.

The verdict names both, and is symmetric in the size: **holds** only when the direction is confirmed
*and* the interval contains the paper's value; **confirmed, smaller** / **confirmed, larger** when
the direction is confirmed but the size differs; **not detected**; **reversed**. A wide interval that
reaches the paper's value but also "no effect" is "not detected" (its size column says
"consistent": too few data to tell), never "holds".

A **ceiling claim** ("other relations' perplexity stays similar": the paper reports a small side
effect and claims no more than that) compares our interval with the paper's value as an upper
bound: **holds** when the interval's upper end is at most the paper's value, **exceeded** when its
lower end lies above it (more collateral damage than the paper reports), **inconclusive** when the
interval contains it. Its ``size`` is read as for an effect; it has no ``direction`` ("—").

Either kind is **no data** when fewer than ``MIN_CLUSTERS`` clusters were resampled (too few for
the interval to say much) or nothing could be estimated; its direction and size are then "—".

A claim row also says whether it tests the paper's own metric or one of our variants (``kind``), so
that the two are tallied apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import pandas as pd

@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n_clusters: int
    n_boot: int
    level: float
    seed: int


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (a resample without the rows a mean needs: undefined)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True)
class ClusterSums:
    """A statistic computed from per-cluster totals, so that a bootstrap resample (a count per cluster)
    is one weighted sum: every resample at once, and a cluster drawn twice counts twice.

    ``totals(frame, keys)`` gives one row per cluster (index: the cluster's key in ``keys``, one per
    row of ``frame``) of numeric columns; ``finish`` maps the columns' totals (arrays: one entry per
    resample, or scalars) to the statistic. Build them with ``row_mean``, ``group_mean_diff`` and
    ``cluster_mean``; ``bootstrap_ci`` also takes any plain ``frame -> float`` function (slower)."""

    totals: Callable[[pd.DataFrame, np.ndarray], pd.DataFrame]
    finish: Callable[[Mapping[str, np.ndarray]], np.ndarray]


def row_mean(column: str, scale: float = 1.0) -> ClusterSums:
    """``scale`` × the mean of ``column`` over the rows (missing values skipped, as pandas does)."""

    def totals(frame: pd.DataFrame, keys: np.ndarray) -> pd.DataFrame:
        x = frame[column].astype(float).to_numpy()
        return pd.DataFrame({"sum": np.nan_to_num(x), "n": ~np.isnan(x)}, dtype=float).groupby(keys).sum()

    return ClusterSums(totals, lambda t: scale * _ratio(t["sum"], t["n"]))


def group_mean_diff(column: str, by: str, a: object, b: object, scale: float = 1.0) -> ClusterSums:
    """``scale`` × (mean of ``column`` over the rows where ``by`` is ``a`` − the same where it is ``b``)."""

    def totals(frame: pd.DataFrame, keys: np.ndarray) -> pd.DataFrame:
        x = frame[column].astype(float).to_numpy()
        ok = ~np.isnan(x)
        cols = {}
        for tag, value in (("a", a), ("b", b)):
            sel = (frame[by] == value).to_numpy() & ok
            cols[f"sum_{tag}"], cols[f"n_{tag}"] = np.where(sel, x, 0.0), sel
        return pd.DataFrame(cols, dtype=float).groupby(keys).sum()

    return ClusterSums(totals, lambda t: scale * (_ratio(t["sum_a"], t["n_a"]) - _ratio(t["sum_b"], t["n_b"])))


def cluster_mean(value: Callable[[pd.DataFrame], float], strict: bool = False) -> ClusterSums:
    """The mean over clusters of ``value(cluster's rows)``. A cluster whose value is undefined (NaN) is
    skipped, or, with ``strict``, makes the statistic undefined for every resample that draws it."""

    def totals(frame: pd.DataFrame, keys: np.ndarray) -> pd.DataFrame:
        v = pd.Series({key: value(rows) for key, rows in frame.groupby(keys, sort=True)}, dtype=float)
        ok = v.notna()
        return pd.DataFrame({"sum": v.fillna(0.0), "n": ok, "bad": ~ok}, dtype=float)

    def finish(t: Mapping[str, np.ndarray]) -> np.ndarray:
        mean = _ratio(t["sum"], t["n"])
        return np.where(np.asarray(t["bad"]) > 0, np.nan, mean) if strict else mean

    return ClusterSums(totals, finish)


def _weighted_totals(counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """counts @ sums, where a cluster not drawn (count 0) adds nothing even if its total is infinite or
    NaN (a plain product would give 0 x inf = NaN), and a drawn one propagates it as a sum would."""
    finite = np.isfinite(sums)
    out = counts @ np.where(finite, sums, 0.0)
    if not finite.all():
        drawn = (counts > 0).astype(float)
        for special, mask in ((np.inf, np.isposinf(sums)), (-np.inf, np.isneginf(sums)), (np.nan, np.isnan(sums))):
            if mask.any():
                out = np.where(drawn @ mask.astype(float) > 0, out + special, out)
    return out


def bootstrap_ci(
    frame: pd.DataFrame,
    statistic: Callable[[pd.DataFrame], float] | ClusterSums,
    cluster: str | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``statistic(frame)``.

    ``cluster`` names a column whose groups are resampled whole, with replacement (rows when None).
    A cluster drawn twice counts twice: in the resampled frame a plain ``statistic`` sees each drawn
    copy under its own label in ``cluster`` (0, 1, ... in draw order), so that grouping by the cluster
    does not merge the copies; a ``ClusterSums`` statistic weights its per-cluster totals by the draw
    counts (the same draws, much faster). Resamples where the statistic is undefined (NaN) are dropped;
    an empty frame gives a NaN interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if frame.empty:
        return Interval(float("nan"), float("nan"), float("nan"), 0, n_boot, level, seed)
    rng = np.random.default_rng(seed)
    if cluster is None:
        codes = np.arange(len(frame))
    else:
        codes, _ = pd.factorize(frame[cluster], use_na_sentinel=False)
    k = int(codes.max()) + 1
    picks = [rng.integers(0, k, size=k) for _ in range(n_boot)]
    if isinstance(statistic, ClusterSums):
        table = statistic.totals(frame, codes).reindex(range(k), fill_value=0.0)
        columns = list(table.columns)
        sums = table.to_numpy(dtype=float)
        estimate = float(statistic.finish(dict(zip(columns, sums.sum(axis=0)))))
        counts = np.stack([np.bincount(pick, minlength=k) for pick in picks]).astype(float)
        drawn = _weighted_totals(counts, sums)
        values = np.asarray(statistic.finish(dict(zip(columns, drawn.T))), dtype=float)
        values = values[np.isfinite(values)]
    else:
        estimate = float(statistic(frame))
        order = np.argsort(codes, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
        sizes = np.array([len(g) for g in groups])
        values = []
        for pick in picks:
            sample = frame.iloc[np.concatenate([groups[i] for i in pick])]
            if cluster is not None:
                sample = sample.copy()
                sample[cluster] = np.repeat(np.arange(k), sizes[pick])
            v = float(statistic(sample))
            if np.isfinite(v):
                values.append(v)
        values = np.asarray(values, dtype=float)
    if not len(values):
        return Interval(estimate, float("nan"), float("nan"), k, n_boot, level, seed)
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), k, n_boot, level, seed)


MIN_CLUSTERS = 10  # fewer clusters (relations, facts or edits resampled) than this: no verdict
NOT_APPLICABLE = "—"  # direction of a ceiling claim; direction and size without data
DIRECTIONS = ("confirmed", "not detected", "reversed")
SIZES = ("smaller", "consistent", "larger")
EFFECT_VERDICTS = ("holds", "confirmed, smaller", "confirmed, larger", "not detected", "reversed", "no data")
CEILING_VERDICTS = ("holds", "exceeded", "inconclusive", "no data")
VERDICTS = tuple(dict.fromkeys(EFFECT_VERDICTS + CEILING_VERDICTS))  # every label, agreement first
PAPER_METRIC, OUR_VARIANT = "paper's metric", "our variant"


def _no_data(ours: Interval) -> bool:
    if not (np.isfinite(ours.estimate) and np.isfinite(ours.low) and np.isfinite(ours.high)):
        return True
    return ours.n_clusters < MIN_CLUSTERS


def _towards_paper(paper: float, ours: Interval, null: float) -> tuple[float, float, float]:
    """The interval's ends and the paper's effect on an axis where "no effect" is 0 and the paper's
    effect is positive, so that one rule serves claims of either sign."""
    effect = paper - null
    if effect == 0:
        raise ValueError("the paper's value equals the null: no direction to test")
    sign = float(np.sign(effect))
    low, high = sorted((sign * (ours.low - null), sign * (ours.high - null)))
    return low, high, abs(effect)


def _position(low: float, high: float, target: float) -> int:
    """-1 when the interval [low, high] lies wholly below ``target``, +1 wholly above, 0 when it contains it."""
    return -1 if high < target else (1 if low > target else 0)


def direction(paper: float, ours: Interval, null: float = 0.0) -> str:
    """Does our interval exclude "no effect" on the paper's side (confirmed), contain it (not detected),
    or exclude it on the other side (reversed)? "—" without data."""
    low, high, _ = _towards_paper(paper, ours, null)
    if _no_data(ours):
        return NOT_APPLICABLE
    return {1: "confirmed", 0: "not detected", -1: "reversed"}[_position(low, high, 0.0)]


def size(paper: float, ours: Interval, null: float = 0.0) -> str:
    """Our interval against the paper's value, in the paper's direction: wholly short of it (smaller),
    containing it (consistent) or wholly beyond it (larger). "—" without data."""
    low, high, effect = _towards_paper(paper, ours, null)
    if _no_data(ours):
        return NOT_APPLICABLE
    return {-1: "smaller", 0: "consistent", 1: "larger"}[_position(low, high, effect)]


def verdict(paper: float, ours: Interval, null: float = 0.0) -> str:
    """The verdict of an effect claim (module docstring): "holds" only when the direction is confirmed
    and the interval contains the paper's value; otherwise it names what differs."""
    found = direction(paper, ours, null)
    if found == NOT_APPLICABLE:
        return "no data"
    if found != "confirmed":
        return found
    how_big = size(paper, ours, null)
    return "holds" if how_big == "consistent" else f"confirmed, {how_big}"


def ceiling_verdict(paper: float, ours: Interval) -> str:
    """The verdict of a ceiling claim: is our side effect at most the paper's (module docstring)?"""
    if _no_data(ours):
        return "no data"
    if ours.high <= paper:
        return "holds"
    if ours.low > paper:
        return "exceeded"
    return "inconclusive"


def _ceiling_size(paper: float, ours: Interval) -> str:
    """The size column of a ceiling claim: our interval against the paper's value, on its own scale."""
    if _no_data(ours):
        return NOT_APPLICABLE
    return {-1: "smaller", 0: "consistent", 1: "larger"}[_position(ours.low, ours.high, paper)]


CLAIM_COLUMNS = ["claim", "where", "kind", "paper", "ours", "ci_low", "ci_high", "null", "unit", "verdict", "direction",
                 "size", "n_clusters", "test", "note"]  # the fields of ``claim_row``, in order


def claim_row(
    claim: str, where: str, paper: float, ours: Interval, null: float = 0.0, unit: str = "", kind: str = PAPER_METRIC,
    ceiling: bool = False, note: str = "",
) -> dict:
    """One row of the claims table: the paper's number, ours with its interval and n, the verdict, and
    the two readings it names (``direction``, ``size``; module docstring)."""
    if ceiling:
        judged = {"verdict": ceiling_verdict(paper, ours), "direction": NOT_APPLICABLE, "size": _ceiling_size(paper, ours)}
    else:
        judged = {"verdict": verdict(paper, ours, null), "direction": direction(paper, ours, null),
                  "size": size(paper, ours, null)}
    return {
        "claim": claim, "where": where, "kind": kind, "paper": paper, "ours": ours.estimate, "ci_low": ours.low,
        "ci_high": ours.high, "null": null, "unit": unit, **judged,
        "n_clusters": ours.n_clusters, "test": "ceiling" if ceiling else "effect", "note": note,
    }


# -- the paper's claims, each as a statistic of the stored results --------------------------------


def _group_diff(column: str, by: str, a: str, b: str) -> Callable[[pd.DataFrame], float]:
    """One cluster's mean of ``column`` where ``by`` is ``a`` minus where it is ``b`` (NaN if either is absent)."""

    def diff(rows: pd.DataFrame) -> float:
        means = rows.groupby(by)[column].mean()
        return float(means.get(a, np.nan) - means.get(b, np.nan))

    return diff


def _paired_relation_diff(column: str, by: str, a: str, b: str) -> ClusterSums:
    """The mean over relations of each relation's (mean of a - mean of b): a paired difference."""
    return cluster_mean(_group_diff(column, by, a, b))


def _erase_change(rows: pd.DataFrame, scope: str) -> float:
    """One erased relation's perplexity change on ``scope``'s prompts, in % (NaN without such prompts)."""
    from ..experiments.evaluation import perplexity

    sel = rows[rows["scope"] == scope]
    if sel.empty:
        return float("nan")
    before, after = perplexity(sel["p_before"].tolist()), perplexity(sel["p_after"].tolist())
    return 100 * (after - before) / before


# Table 5, each a mean over erased relations; a relation without both scopes leaves it undefined
_ERASE_CONTRAST = cluster_mean(lambda rows: _erase_change(rows, "erased") - _erase_change(rows, "other"), strict=True)
_ERASE_OTHER_CHANGE = cluster_mean(lambda rows: _erase_change(rows, "other"), strict=True)


def _delta_ppl(scope: str, source: str = "logp") -> ClusterSums:
    """Table 6's Delta PPL (``update_facts.delta_ppl``) of the edits' ``scope`` prompts (give it one neuron
    set's rows), from per-fact totals of the edits' log perplexities, so that a fact drawn twice counts its
    edits twice."""
    from ..experiments.update_facts import edit_log_perplexities, ppl_difference

    def totals(frame: pd.DataFrame, keys: np.ndarray) -> pd.DataFrame:
        sel = (frame["scope"] == scope).to_numpy()
        if not sel.any():
            return pd.DataFrame(columns=["before", "after", "n"], dtype=float)
        per_edit = edit_log_perplexities(frame[sel].assign(_key=keys[sel]), source)
        return per_edit.assign(n=1.0).groupby("_key")[["before", "after", "n"]].sum()

    return ClusterSums(totals, lambda t: ppl_difference(_ratio(t["before"], t["n"]), _ratio(t["after"], t["n"])))


def paper_claims(tables: dict[str, pd.DataFrame], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per claim of the paper that the stored results can test, with the paper's number
    (``kn_lib.paper``), ours, a 95% bootstrap interval and the verdict (``claim_row``).

    ``tables`` (as the ``kn`` stages store them; any may be missing, its claims are left out):
    ``pairs`` (statistics), ``suppress`` (suppress-amplify ``by_relation``), ``bingrel``
    (bingrel ``by_relation``), ``bingrel_abs`` (the same over |activation|, e.g. from
    ``bingrel_activation.mean_activation(..., absolute=True)``), ``update`` (update ``table``), ``update_signed``
    (the same for the sign-aware edit, our variant), ``ppl_prompts`` (update ``ppl_prompts``), ``erase`` (erase ``table``).

    Each interval resamples the unit its statistic averages over: relations for Table 2, Figures 4-5
    and Table 4, edited facts for Table 6, erased relations for Table 5 (so a run that erased fewer
    than ``MIN_CLUSTERS`` relations gets "no data", however many facts it measured).
    """
    from ..experiments.update_facts import delta_ppl
    from . import paper

    p = paper.value
    rows = []
    boot = dict(n_boot=n_boot, seed=seed)
    if "pairs" in tables:
        pairs = tables["pairs"].assign(relation=lambda f: f["fact_a"].str.split("/").str[0])
        ig = pairs[pairs["method"] == "ig"]
        rows.append(claim_row(
            "KNs: same-relation fact pairs share more neurons than different-relation pairs", "Table 2",
            p("intra_overlap_ours") - p("inter_overlap_ours"),
            bootstrap_ci(ig, group_mean_diff("intersection", "kind", "intra", "inter"), "relation", **boot),
            unit="neurons"))
        both = pairs[pairs["kind"] == "inter"]
        rows.append(claim_row(
            "baseline neurons are shared across relations more than KNs", "Table 2",
            p("inter_overlap_baseline") - p("inter_overlap_ours"),
            bootstrap_ci(both, group_mean_diff("intersection", "method", "activation", "ig"), "relation", **boot),
            unit="neurons"))
    if "suppress" in tables:
        own = tables["suppress"][tables["suppress"]["scope"] == "own"].assign(change=lambda f: 100 * f["change_ratio"])
        for op, key, base_key in (("suppress", "suppress_change_ours", "suppress_change_baseline"),
                                  ("amplify", "amplify_change_ours", "amplify_change_baseline")):
            sel = own[own["operation"] == op]
            verb = "lowers" if op == "suppress" else "raises"
            rows.append(claim_row(
                f"{op}ing KNs {verb} p(answer)", "Figure 4" if op == "suppress" else "Figure 5", p(key),
                bootstrap_ci(sel[sel["method"] == "ig"], row_mean("change"), "relation", **boot), unit="%"))
            rows.append(claim_row(
                f"{op}ing KNs changes p(answer) more than {op}ing baseline neurons (difference)",
                "Figure 4" if op == "suppress" else "Figure 5", p(key) - p(base_key),
                bootstrap_ci(sel, _paired_relation_diff("change", "method", "ig", "activation"), "relation", **boot),
                unit="%"))
    # Table 4 signed as the paper averages it, and over |activation| (gated FFNs: signs cancel)
    for name, claim in (("bingrel", "KNs are more active on T1 (fact expressed) than on {}"),
                        ("bingrel_abs", "KNs are more strongly activated (|activation|) on T1 than on {}")):
        if name not in tables:
            continue
        ig = tables[name][tables[name]["method"] == "ig"]
        for other, key in (("T2", "bing_t2_ours"), ("T3", "bing_t3_ours")):
            rows.append(claim_row(
                claim.format(other), "Table 4", p("bing_t1_ours") - p(key),
                bootstrap_ci(ig, _paired_relation_diff("activation", "type", "T1", other), "relation", **boot),
                unit="activation", kind=PAPER_METRIC if name == "bingrel" else OUR_VARIANT))
    for name, suffix, kind in (("update", "", PAPER_METRIC), ("update_signed", " (sign-aware edit, lambda2 = 2)", OUR_VARIANT)):
        if name not in tables:
            continue
        upd = tables[name]
        for metric, kn, rnd in (("changed", "update_change_rate_kn", "update_change_rate_random"),
                                ("success", "update_success_rate_kn", "update_success_rate_random")):
            label = "change" if metric == "changed" else "success"
            rows.append(claim_row(
                f"editing KNs updates facts: {label} rate, KNs minus random neurons{suffix}", "Table 6", p(kn) - p(rnd),
                bootstrap_ci(upd, group_mean_diff(metric, "neuron_set", "knowledge", "random", scale=100), "fact_id", **boot), unit="points", kind=kind))
    if "ppl_prompts" in tables and len(tables["ppl_prompts"]):
        ppl = tables["ppl_prompts"]
        for scope, key, what in (("intra", "update_intra_ppl_kn", "other facts of the relation"),
                                 ("inter", "update_inter_ppl_kn", "facts of other relations")):
            official = delta_ppl(ppl[(ppl["scope"] == scope) & (ppl["neuron_set"] == "knowledge")], "p")
            rows.append(claim_row(
                f"editing KNs barely changes the perplexity of {what} (Delta PPL at most the paper's)", "Table 6", p(key),
                bootstrap_ci(ppl[ppl["neuron_set"] == "knowledge"], _delta_ppl(scope), "fact_id", **boot),
                unit="Δ perplexity", ceiling=True, note=f"from log-probabilities; the paper's formula on float32 p gives {official:.3g}"
                + (" (an answer probability underflows to 0)" if not np.isfinite(official) else "")))
    if "erase" in tables:
        er = tables["erase"][tables["erase"]["method"] == "ig"] if "method" in tables["erase"] else tables["erase"]
        paper_contrast = np.mean([
            100 * ((v["erased_after"] - v["erased_before"]) / v["erased_before"] - (v["other_after"] - v["other_before"]) / v["other_before"])
            for v in paper.ERASE.values()
        ])
        rows.append(claim_row(
            "erasing a relation's top KNs hurts that relation more than the others (PPL change, difference)", "Table 5",
            float(paper_contrast), bootstrap_ci(er, _ERASE_CONTRAST, "erased_relation", **boot), unit="points"))
        paper_other = np.mean([100 * (v["other_after"] - v["other_before"]) / v["other_before"] for v in paper.ERASE.values()])
        rows.append(claim_row(
            "erasing a relation leaves the other relations' perplexity similar (PPL change at most the paper's)", "Table 5",
            float(paper_other), bootstrap_ci(er, _ERASE_OTHER_CHANGE, "erased_relation", **boot), unit="%", ceiling=True))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)  # no claim testable: an empty table, its columns kept


def edit_reach(paraphrases: pd.DataFrame, ppl_prompts: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Beyond the paper: how far an edit of ``update_facts`` reaches, with 95% intervals over edited facts.

    Generalisation: the share of the edited fact's *other* prompts (paraphrases) that now answer the
    new object (``success``), and of those that answered the old object before, the share that no
    longer do (``changed``). Specificity: the share of prompts
    of *other* facts of the same relation whose answer changed, and that now answer the edit's new
    object. One row per (quantity, neuron set).
    """
    intra = ppl_prompts[ppl_prompts["scope"] == "intra"]
    measures = (
        ("paraphrases now answering the new object (generalisation)", paraphrases, "success"),
        ("paraphrases that answered the old object and no longer do", paraphrases[paraphrases["correct_before"]], "changed"),
        ("other facts of the relation: answer changed (specificity)", intra, "top1_changed"),
        ("other facts of the relation: now answering the new object", intra, "new_after"),
    )
    rows = []
    for quantity, frame, column in measures:
        for neuron_set, sel in frame.groupby("neuron_set"):
            iv = bootstrap_ci(sel, row_mean(column, scale=100), "fact_id", n_boot=n_boot, seed=seed)
            # facts are resampled (the official sampling may edit a fact twice: two edits, one cluster)
            n_edits = int(sel["edit"].nunique()) if "edit" in sel.columns else iv.n_clusters
            rows.append({"quantity": quantity, "neurons": neuron_set, "percent": iv.estimate, "ci_low": iv.low,
                         "ci_high": iv.high, "n_prompts": len(sel), "n_edits": n_edits, "n_facts": iv.n_clusters})
    return pd.DataFrame(rows)


def claims_by_sample(groups: dict[str, dict[str, pd.DataFrame]], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``paper_claims`` of a design that draws each claim's tables from the sample that serves it best
    (e.g. Table 2 from a wide uniform sample, Figures 4-5 from known facts): ``groups`` maps a sample's
    label to the tables taken from it, and each row says in ``sample`` where its data came from. A
    table should sit in one group only, so that no claim is tested twice."""
    names = [name for tables in groups.values() for name in tables]
    if len(names) != len(set(names)):
        raise ValueError(f"a table is taken from two samples: {sorted(n for n in set(names) if names.count(n) > 1)}")
    frames = [paper_claims(tables, n_boot=n_boot, seed=seed).assign(sample=label) for label, tables in groups.items() if tables]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*CLAIM_COLUMNS, "sample"])


def compare_designs(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Each claim under two designs (``paper_claims`` tables: two samples, or two refinement rules;
    either may carry a ``sample`` column naming where its row's data came from, kept as
    ``sample_before`` and ``sample``): n, estimate,
    interval and verdict of both, and the interval's width after as a share of before (below 1:
    narrower). Claims tested in only one design keep empty cells for the other.

    Only a claim with data on both sides (``both_data``: tested in both, neither "no data") is a
    comparison: a verdict that goes from "no data" to anything says the design added clusters, not that
    the answer changed. ``verdict_changed`` is therefore True only for such a claim, and ``width_ratio``
    is NaN for the others."""
    cols = ["claim", "kind", "n_clusters", "ours", "ci_low", "ci_high", "verdict"]
    extra = ["sample"] if "sample" in after else []
    first = before[cols + (["sample"] if "sample" in before else [])].rename(columns={"sample": "sample_before"})
    out = first.merge(after[cols + extra], on=["claim", "kind"], how="outer", suffixes=("_before", "_after"))
    decided = {s: out[f"verdict_{s}"].notna() & (out[f"verdict_{s}"] != "no data") for s in ("before", "after")}
    out["both_data"] = decided["before"] & decided["after"]
    width = {s: out[f"ci_high_{s}"] - out[f"ci_low_{s}"] for s in ("before", "after")}
    ratio = (width["after"] / width["before"].where(width["before"] > 0)).astype(float)
    out["width_ratio"] = ratio.where(out["both_data"])
    out["verdict_changed"] = out["both_data"] & (out["verdict_before"] != out["verdict_after"])
    return out


def agreement(claims: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Do two (or more) models' claims tables say the same? One row per claim that every model could
    test (no "no data"), its verdict per model (columns named by ``claims``' keys), and whether the
    direction and the whole verdict agree. Models differ in scale, so the direction (is the paper's
    effect there at all?) can agree where the size does not."""
    both = pd.concat([frame.assign(model=name) for name, frame in claims.items()])
    both = both[both["verdict"] != "no data"]
    if both.empty:
        return pd.DataFrame(columns=["claim", *claims, "same direction", "same verdict"])
    wide = {col: both.pivot_table(index="claim", columns="model", values=col, aggfunc="first").reindex(columns=list(claims))
            for col in ("verdict", "direction")}
    tested = wide["verdict"].notna().all(axis=1)
    out = wide["verdict"][tested].copy()
    out["same direction"] = wide["direction"][tested].nunique(axis=1).eq(1)
    out["same verdict"] = out[list(claims)].nunique(axis=1).eq(1)
    return out.reset_index().rename_axis(columns=None)
