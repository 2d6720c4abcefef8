"""Does a claim of the paper hold here? Each claim as a statistic of the stored results, with its interval.

The book's "Does it hold?" chapter puts each claim of Dai et al. (2022) next to our estimate with a
95% bootstrap interval. Resampling is by *cluster*, the unit the statistic averages over: a
relation-averaged number (Figures 4-5, Tables 4 and 5) is resampled over relations, a per-fact or
per-edit one (Table 6) over facts, so the interval reflects the variation the paper's average hides.
A cluster drawn twice counts twice (``bootstrap_ci``): merging the copies, as a statistic that groups by
the cluster would, averages the distinct clusters drawn and gives too narrow an interval.

``paper_claims`` computes the claims; the verdict of each interval (effect and ceiling claims, Holm's
family, the Monte Carlo borderline) follows the rules of ``kn_lib.book.verdict_rules``, whose names,
like those of ``kn_lib.book.bootstrap``, are re-exported here.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .bootstrap import (  # noqa: F401  (re-exported: the chapters and critiques import them from here)
    VERDICT_BOOT, ClusterSums, Interval, _ratio, _weighted_totals, at_level, bootstrap_ci, cluster_mean, group_mean_diff, holm,
    p_value, row_mean, two_way_mean_diff_ci,
)
from .verdict_rules import (  # noqa: F401  (re-exported: the chapters, tests and critiques import them from here)
    BORDERLINE, BORDERLINE_FACTOR, CEILING_VERDICTS, CLAIM_COLUMNS, DIRECTIONS, EFFECT_VERDICTS, EQUIVALENCE_MARGIN,
    HEAVY_TAIL_MIN_CLUSTERS, MIN_CLUSTERS, NOT_APPLICABLE, OUR_VARIANT, PAPER_METRIC, RETENTION_VERDICTS, SIZES, VERDICTS,
    ceiling_verdict, claim_row, direction, expected_false, holm_family, retention_verdict, size, verdict,
)


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
    from ..experiments.update_summary import edit_log_perplexities, ppl_difference

    def totals(frame: pd.DataFrame, keys: np.ndarray) -> pd.DataFrame:
        sel = (frame["scope"] == scope).to_numpy()
        if not sel.any():
            return pd.DataFrame(columns=["before", "after", "n"], dtype=float)
        per_edit = edit_log_perplexities(frame[sel].assign(_key=keys[sel]), source)
        return per_edit.assign(n=1.0).groupby("_key")[["before", "after", "n"]].sum()

    return ClusterSums(totals, lambda t: ppl_difference(_ratio(t["before"], t["n"]), _ratio(t["after"], t["n"])))


def _scaled(iv: Interval, factor: float) -> Interval:
    """``iv`` times a positive constant (its ends, errors and draws)."""
    from dataclasses import replace

    return replace(iv, estimate=iv.estimate * factor, low=iv.low * factor, high=iv.high * factor, mc_low=iv.mc_low * factor,
                   mc_high=iv.mc_high * factor, draws=None if iv.draws is None else iv.draws * factor)


def _table4_interval(ig: pd.DataFrame, other: str, boot: dict) -> Interval:
    """Table 4's T1 − ``other`` difference as the official mean over every relation of the run (one without
    data at 0: ``claim_tables.with_absent_relations`` marks those rows ``padded``), with its interval from
    resampling only the relations with data: the mean over all is (with data / all) x the mean over those,
    so n is the number of relations with data, not the padded count."""
    if "padded" not in ig.columns:
        return bootstrap_ci(ig, _paired_relation_diff("activation", "type", "T1", other), "relation", **boot)
    padded = ig["padded"].fillna(False).astype(bool)
    present = ig[~padded]
    n_all, n_present = ig["relation"].nunique(), present["relation"].nunique()
    iv = bootstrap_ci(present, _paired_relation_diff("activation", "type", "T1", other), "relation", **boot)
    return _scaled(iv, n_present / n_all) if n_all else iv


def paper_claims(tables: dict[str, pd.DataFrame], n_boot: int = VERDICT_BOOT, seed: int = 0, method: str = "bca") -> pd.DataFrame:
    """One row per claim of the paper that the stored results can test, with the paper's number
    (``kn_lib.paper``), ours, a 95% bootstrap interval and the verdict (``claim_row``).

    ``tables`` (as the ``kn`` stages store them; any may be missing, its claims are left out):
    ``pairs`` (statistics), ``suppress`` (suppress-amplify ``by_relation``), ``bingrel``
    (bingrel ``by_relation``), ``bingrel_abs`` (the same over |activation|, e.g. from
    ``bingrel_activation.mean_activation(..., absolute=True)``), ``update`` (update ``table``), ``update_signed``
    (the same for the sign-aware edit, our variant), ``ppl_prompts`` (update ``ppl_prompts``), ``erase`` (erase ``table``).

    Each interval resamples the unit its statistic averages over: relations for Figures 4-5 and Table 4,
    both relations of a pair at once for Table 2 (``two_way_mean_diff_ci``), edited facts for Table 6,
    erased relations for Table 5 (whose heavy-tailed perplexity changes need ``HEAVY_TAIL_MIN_CLUSTERS``
    erased relations for a verdict, however many facts were measured).
    """
    from ..experiments.update_summary import delta_ppl
    from . import paper

    p = paper.value
    rows = []
    boot = dict(n_boot=n_boot, seed=seed, method=method)
    if "pairs" in tables:
        pairs = tables["pairs"].assign(relation=lambda f: f["fact_a"].str.split("/").str[0],
                                       relation_b=lambda f: f["fact_b"].str.split("/").str[0])
        ig = pairs[pairs["method"] == "ig"]
        rows.append(claim_row(
            "KNs: same-relation fact pairs share more neurons than different-relation pairs", "Table 2",
            p("intra_overlap_ours") - p("inter_overlap_ours"),
            two_way_mean_diff_ci(ig, "intersection", "kind", "intra", "inter", "relation", "relation_b", **boot),
            unit="neurons"))
        both = pairs[pairs["kind"] == "inter"]
        rows.append(claim_row(
            "baseline neurons are shared across relations more than KNs", "Table 2",
            p("inter_overlap_baseline") - p("inter_overlap_ours"),
            two_way_mean_diff_ci(both, "intersection", "method", "activation", "ig", "relation", "relation_b", **boot),
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
                claim.format(other), "Table 4", p("bing_t1_ours") - p(key), _table4_interval(ig, other, boot),
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
            float(paper_contrast), bootstrap_ci(er, _ERASE_CONTRAST, "erased_relation", **boot), unit="points",
            min_clusters=HEAVY_TAIL_MIN_CLUSTERS))
        paper_other = np.mean([100 * (v["other_after"] - v["other_before"]) / v["other_before"] for v in paper.ERASE.values()])
        rows.append(claim_row(
            "erasing a relation leaves the other relations' perplexity similar (PPL change at most the paper's)", "Table 5",
            float(paper_other), bootstrap_ci(er, _ERASE_OTHER_CHANGE, "erased_relation", **boot), unit="%", ceiling=True,
            min_clusters=HEAVY_TAIL_MIN_CLUSTERS))
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


def claims_by_sample(groups: dict[str, dict[str, pd.DataFrame]], n_boot: int = VERDICT_BOOT, seed: int = 0,
                     method: str = "bca") -> pd.DataFrame:
    """``paper_claims`` of a design that draws each claim's tables from the sample that serves it best
    (e.g. Table 2 from a wide uniform sample, Figures 4-5 from known facts): ``groups`` maps a sample's
    label to the tables taken from it, and each row says in ``sample`` where its data came from. A
    table should sit in one group only, so that no claim is tested twice."""
    names = [name for tables in groups.values() for name in tables]
    if len(names) != len(set(names)):
        raise ValueError(f"a table is taken from two samples: {sorted(n for n in set(names) if names.count(n) > 1)}")
    frames = [paper_claims(tables, n_boot=n_boot, seed=seed, method=method).assign(sample=label)
              for label, tables in groups.items() if tables]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*CLAIM_COLUMNS, "sample"])


def containment_verdict(row: Mapping) -> str:
    """The rule this book used before the equivalence test, on one claims row: "holds" when the interval
    excludes the null and *contains* the paper's value (a ceiling: when its upper end is at most it); no
    data below ``MIN_CLUSTERS``. Kept only to show what the new rule moved (``rule_changes``)."""
    low, high, paper, null = row["ci_low"], row["ci_high"], row["paper"], row["null"]
    if not (np.isfinite(low) and np.isfinite(high)) or row["n_clusters"] < MIN_CLUSTERS:
        return "no data"
    if row["test"] == "ceiling":
        return "holds" if high <= paper else ("exceeded" if low > paper else "inconclusive")
    sign = 1.0 if paper > null else -1.0
    low, high = sorted((sign * (low - null), sign * (high - null)))
    effect = abs(paper - null)
    if high < 0 or low <= 0:
        return "reversed" if high < 0 else "not detected"
    return "confirmed, smaller" if high < effect else ("confirmed, larger" if low > effect else "holds")


def rule_changes(groups: dict[str, dict[str, pd.DataFrame]], n_boot: int = VERDICT_BOOT, seed: int = 0) -> pd.DataFrame:
    """Each claim of ``claims_by_sample(groups)`` under the old rule (1,000 percentile resamples, one-way
    clusters for Table 2, containment: ``containment_verdict``) and the new one (``paper_claims``'s
    defaults): claim, where, n, ``old rule``, ``new rule`` and whether it ``changed``."""
    new = claims_by_sample(groups, n_boot=n_boot, seed=seed)
    old = claims_by_sample(groups, n_boot=1000, seed=seed, method="percentile")
    out = new[["claim", "where", "n_clusters", "verdict"]].rename(columns={"n_clusters": "n", "verdict": "new rule"})
    out.insert(3, "old rule", [containment_verdict(r) for _, r in old.iterrows()])
    return out.assign(changed=out["old rule"] != out["new rule"]).reset_index(drop=True)


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
