"""Is it the neurons? Knowledge neurons against their matched controls, paired by fact (or edit, or erased
relation), from the stored results of suppress-amplify, update and erase.

Every intervention's effect is first reduced to one number per unit the claim is about, for each neuron
set (``knowledge``, ``random-layer``, ``activation-matched``; ``experiments.controls``):

* suppress / amplify (``manipulation_by_fact``): per fact with knowledge neurons, the change of p(answer)
  over its own prompts (the paper's ratio of means, in %) and the share of its prompts whose top-1 answer
  flips in the operation's direction (among those where it can);
* update (``update_by_edit``): per edit, success (top-1 is the new answer) and change (top-1 no longer the
  old one), in %, resampled by edited fact;
* erase (``erase_by_relation``): per erased relation, the perplexity change (%), the accuracy change
  (points) and the correct answers lost (% of those answered before) on its own prompts.

``effects`` gives each set's mean with a bootstrap interval; ``control_claims`` the paired difference
knowledge minus control, with the verdict ``beats its control`` only when the interval lies wholly on
the side the paper's claim predicts (lower p for suppress, higher for amplify, more flips and edit
successes, a larger perplexity rise). Fewer than ``claims.MIN_CLUSTERS`` units (``claims.
HEAVY_TAIL_MIN_CLUSTERS`` for a perplexity change): no data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..experiments.controls import CONTROLS
from ..experiments.suppress_amplify import change_ratio, flip_eligible
from .claims import HEAVY_TAIL_MIN_CLUSTERS, MIN_CLUSTERS, Interval, bootstrap_ci, row_mean

if TYPE_CHECKING:
    from ..experiments.paraphrase_consistency import ConsistencyResult

KNOWLEDGE = "knowledge"
CONTROL_SETS = CONTROLS  # the experiments' matched controls, by the names their rows carry
CONTROL_VERDICTS = ("beats its control", "does not beat its control", "control stronger", "no data")
EFFECT_COLUMNS = ["model", "intervention", "measure", "neuron_set", "unit", "estimate", "ci_low", "ci_high", "n", "n_unit"]
CLAIM_COLUMNS = ["model", "intervention", "measure", "control", "unit", "expected", "estimate", "ci_low", "ci_high", "n",
                 "n_unit", "verdict"]


def _set_name(method: str, knowledge_method: str = "ig") -> str:
    return KNOWLEDGE if method == knowledge_method else method


def manipulation_by_fact(table: pd.DataFrame, knowledge_method: str = "ig") -> pd.DataFrame:
    """Per (fact, neuron set, operation): ``change`` (%, ratio of means over the fact's own prompts),
    ``flip`` (%, among its prompts that can flip; NaN when none can) and ``n_eligible``. Facts without
    knowledge neurons (no control exists for them) and the activation baseline are left out."""
    sel = table[(table["scope"] == "own") & (table["n_kn"] > 0)]
    sel = sel[sel["method"].isin([knowledge_method, *CONTROL_SETS])]
    rows = []
    for (fact, method, op), g in sel.groupby(["fact_id", "method", "operation"], sort=True):
        eligible = g[flip_eligible(g, op)] if "flip" in g else g.iloc[:0]
        rows.append({"fact_id": fact, "relation": g["relation"].iloc[0], "neuron_set": _set_name(method, knowledge_method),
                     "operation": op, "change": 100 * change_ratio(g["p_before"], g["p_after"]),
                     "flip": 100 * eligible["flip"].mean() if len(eligible) else np.nan, "n_eligible": len(eligible)})
    return pd.DataFrame(rows, columns=["fact_id", "relation", "neuron_set", "operation", "change", "flip", "n_eligible"])


def update_by_edit(table: pd.DataFrame) -> pd.DataFrame:
    """Per (edit, neuron set): success and change in %, with the edited fact (the resampled unit)."""
    rows = table[table["neuron_set"].isin([KNOWLEDGE, *CONTROL_SETS])]
    return rows.assign(success=100 * rows["success"].astype(float), changed=100 * rows["changed"].astype(float))[
        ["edit", "fact_id", "relation", "neuron_set", "success", "changed"]].reset_index(drop=True)


def erase_by_relation(table: pd.DataFrame, knowledge_method: str = "ig", scope: str = "erased") -> pd.DataFrame:
    """Per (erased relation, neuron set): the perplexity change of its own prompts (%, Table 5's
    ``erase_relations.table5``), their accuracy change (points) and the share of their correct answers the
    erasure took away (``flip``, % of the prompts answered top-1 before). ``scope="other"``: the same of the
    other relations' prompts under that erasure (its collateral damage). Rows: by relation, the knowledge
    neurons first, then the controls in ``CONTROL_SETS`` order."""
    from ..experiments.erase_relations import table5

    frames = []
    no_neurons = pd.DataFrame(columns=["relation"])  # table5's neuron counts are not needed here
    for method, part in table[table["method"].isin([knowledge_method, *CONTROL_SETS])].groupby("method", sort=True):
        t5 = table5(part, no_neurons)
        frames.append(pd.DataFrame({
            "erased_relation": t5["relation"], "neuron_set": _set_name(method, knowledge_method),
            "ppl_change": t5[f"{scope}_ppl_change"],
            "accuracy_change": 100 * (t5[f"{scope}_accuracy_after"] - t5[f"{scope}_accuracy_before"]),
            "flip": t5[f"{scope}_flip_rate"], "n_prompts": t5[f"{scope}_n_prompts"]}))
    columns = ["erased_relation", "neuron_set", "ppl_change", "accuracy_change", "flip", "n_prompts"]
    if not frames:
        return pd.DataFrame(columns=columns)
    rank = {name: i for i, name in enumerate((KNOWLEDGE, *CONTROL_SETS))}  # knowledge neurons, then their controls
    out = pd.concat(frames, ignore_index=True)
    out = out.assign(rank=out["neuron_set"].map(rank)).sort_values(["erased_relation", "rank"], ignore_index=True)
    return out[columns]


# (intervention, measure, unit, expected sign of knowledge minus control) and where its units come from
MEASURES = (
    ("suppress", "p(answer) change", "%", -1), ("suppress", "correct answers lost", "% of prompts", +1),
    ("amplify", "p(answer) change", "%", +1), ("amplify", "wrong answers made correct", "% of prompts", +1),
    ("update", "success", "% of edits", +1), ("update", "change", "% of edits", +1),
    ("erase", "perplexity change", "%", +1), ("erase", "accuracy change", "points", -1),
    ("erase", "correct answers lost", "% of prompts", +1),
)


def _units(intervention: str, measure: str, frames: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, str, str, str] | None:
    """(rows with one value per unit and set, value column, unit id column, cluster column), or None. Facts of
    a relation are correlated (they share templates and often neurons), so facts and edits are resampled
    by relation, as the paper's relation-averaged claims are."""
    if intervention in ("suppress", "amplify") and "manipulation" in frames:
        f = frames["manipulation"]
        column = "change" if "change" in measure else "flip"
        return f[f["operation"] == intervention], column, "fact_id", "relation"
    if intervention == "update" and "update" in frames:
        return frames["update"], "success" if measure == "success" else "changed", "edit", "relation"
    if intervention == "erase" and "erase" in frames:
        column = {"perplexity change": "ppl_change", "accuracy change": "accuracy_change"}.get(measure, "flip")
        return frames["erase"], column, "erased_relation", "erased_relation"
    return None


def _frames(model_tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    out = {}
    if "suppress" in model_tables:
        out["manipulation"] = manipulation_by_fact(model_tables["suppress"])
    if "update" in model_tables:
        out["update"] = update_by_edit(model_tables["update"])
    if "erase" in model_tables:
        out["erase"] = erase_by_relation(model_tables["erase"])
    return out


def _measured(tables: dict[str, dict[str, pd.DataFrame]]):
    """(model, intervention, measure, unit label, expected sign, per-unit frame, value column, unit id
    column, resampled column) for every measure the tables can give."""
    for model, model_tables in tables.items():
        frames = _frames(model_tables)
        for intervention, measure, unit_label, expected in MEASURES:
            found = _units(intervention, measure, frames)
            if found is not None:
                yield (model, intervention, measure, unit_label, expected, *found)


def effects(tables: dict[str, dict[str, pd.DataFrame]], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per model, intervention, measure and neuron set: the mean over units with a 95 % bootstrap interval
    over the resampled unit (facts; erased relations). ``tables``: model -> {"suppress": suppress-amplify
    ``table``, "update": update ``table``, "erase": erase ``table``} (any may be missing)."""
    rows = []
    for model, intervention, measure, unit, _, frame, column, _, cluster in _measured(tables):
        for name in (KNOWLEDGE, *CONTROL_SETS):
            sel = frame[(frame["neuron_set"] == name) & frame[column].notna()]
            if sel.empty:
                continue
            ci = bootstrap_ci(sel, row_mean(column), cluster, n_boot=n_boot, seed=seed)
            rows.append({"model": model, "intervention": intervention, "measure": measure, "neuron_set": name,
                         "unit": unit, "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                         "n": ci.n_clusters, "n_unit": _unit_name(cluster)})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def effect_text(effects: pd.DataFrame, model: str, intervention: str, measure: str, neuron_set: str,
                signed: bool = False, unit: str = "") -> str:
    """One row of ``effects`` as prose writes it: "estimate[unit] [low, high]" (signed: "+x")."""
    row = effects.set_index(["model", "intervention", "measure", "neuron_set"]).loc[(model, intervention, measure, neuron_set)]
    number = "{:+.1f}" if signed else "{:.1f}"
    return f"{number.format(row.estimate)}{unit} [{number.format(row.ci_low)}, {number.format(row.ci_high)}]"


def _unit_name(cluster: str) -> str:
    return {"fact_id": "facts", "relation": "relations", "erased_relation": "erased relations"}[cluster]


def beats_control(ours: Interval, expected: int, min_clusters: int = MIN_CLUSTERS) -> str:
    """``beats its control`` when the interval of knowledge minus control lies wholly on the ``expected``
    side of 0 (+1: above, -1: below); ``control stronger`` when wholly on the other side; fewer than
    ``min_clusters`` units or no interval: ``no data``."""
    if not (np.isfinite(ours.low) and np.isfinite(ours.high)) or ours.n_clusters < min_clusters:
        return "no data"
    low, high = (ours.low, ours.high) if expected > 0 else (-ours.high, -ours.low)
    if low > 0:
        return "beats its control"
    if high < 0:
        return "control stronger"
    return "does not beat its control"


def paired_differences(frame: pd.DataFrame, column: str, unit: str, cluster: str, control: str) -> pd.DataFrame:
    """One row per unit measured with both sets: ``diff`` = knowledge minus ``control``, with its cluster."""
    keys = list(dict.fromkeys([unit, cluster]))
    wide = frame.pivot_table(index=keys, columns="neuron_set", values=column, aggfunc="mean")
    if KNOWLEDGE not in wide or control not in wide:
        return pd.DataFrame(columns=[*keys, "diff"])
    return (wide[KNOWLEDGE] - wide[control]).dropna().rename("diff").reset_index()


def control_claims(tables: dict[str, dict[str, pd.DataFrame]], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per model, intervention, measure and control: knowledge minus control, paired by unit (fact, edit,
    erased relation), its 95 % bootstrap interval over the resampled unit, and ``beats_control``."""
    rows = []
    for model, intervention, measure, unit_label, expected, frame, column, unit, cluster in _measured(tables):
        for control in CONTROL_SETS:
            diffs = paired_differences(frame[frame[column].notna()], column, unit, cluster, control)
            if diffs.empty:
                continue
            ci = bootstrap_ci(diffs, row_mean("diff"), cluster, n_boot=n_boot, seed=seed)
            rows.append({"model": model, "intervention": intervention, "measure": measure, "control": control,
                         "unit": "points" if unit_label.startswith("%") else unit_label,
                         "expected": "below 0" if expected < 0 else "above 0", "estimate": ci.estimate,
                         "ci_low": ci.low, "ci_high": ci.high, "n": ci.n_clusters, "n_unit": _unit_name(cluster),
                         "verdict": beats_control(ci, expected, _min_clusters(intervention, measure))})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _min_clusters(intervention: str, measure: str) -> int:
    """A perplexity change is heavy-tailed (one erased relation can weigh 1000 times another): its
    comparisons need ``claims.HEAVY_TAIL_MIN_CLUSTERS`` units, as Table 5's claims do."""
    return HEAVY_TAIL_MIN_CLUSTERS if measure == "perplexity change" else MIN_CLUSTERS


# The known-facts runs that carry the matched controls: model -> {experiment: facts per relation of its run}
CONTROL_RUNS: dict[str, dict[str, int | None]] = {
    "smollm2-135m": {"suppress": None, "update": 48, "erase": None},  # None: the known-facts default (30)
    "gemma3-270m": {"suppress": 8, "update": 8, "erase": 8},
}
OFFICIAL = "official"
# Runs read under a named variant of the definitions, because the official ones do nothing there:
# (model, experiment) -> (the run's stage options beyond the official runs', the variant's name in tables).
# Gemma 3 270M's official update edits nothing: select_kn drops every neuron of a relation with fewer than
# 20 bags, and its known-facts sample has at most 8 facts per relation.
CONTROL_VARIANTS: dict[tuple[str, str], tuple[tuple[tuple[str, object], ...], str]] = {
    ("gemma3-270m", "update"): ((("selection", "ours"), ("sampling", "ours")), "ours: selection, sampling"),
}
_EXPERIMENT_OF = {"suppress": "suppress", "amplify": "suppress", "update": "update", "erase": "erase"}


def _variant(model: str, experiment: str) -> tuple[tuple[tuple[str, object], ...], str]:
    """(stage options beyond the official runs', name) of ``experiment``'s control run: none, ``OFFICIAL``."""
    return CONTROL_VARIANTS.get((model, experiment), ((), OFFICIAL))


def control_sample(model: str, experiment: str, size: int | None):
    """The known-facts sample (``BookSample``) whose ``experiment`` run carries the matched controls: the
    official definitions' run, or the variant ``CONTROL_VARIANTS`` names for it."""
    from . import KNOWN_OFFICIAL, known_facts_sample

    return known_facts_sample(model, size, KNOWN_OFFICIAL + _variant(model, experiment)[0])


def definitions_of(model: str, intervention: str) -> str:
    """Which definitions the committed control run of ``intervention`` (suppress, amplify, update, erase)
    uses: ``official``, or the name of its variant."""
    return _variant(model, _EXPERIMENT_OF[intervention])[1]


def with_definitions(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (rows of ``effects`` or ``control_claims``) with a ``definitions`` column after
    ``intervention``: a table that mixes a variant's rows with official ones names which is which."""
    out = frame.copy()
    out.insert(out.columns.get_loc("intervention") + 1, "definitions",
               [definitions_of(m, i) for m, i in zip(out["model"], out["intervention"])])
    return out


_STAGES = {"suppress": "suppress-amplify", "update": "update", "erase": "erase"}


NON_KN, OWN_ONLY = "non-KN", "own KNs avoided"  # which control definition a comparison uses (``control_definition``)
_USED: dict[tuple[str, str], str] = {}


def control_definition(model: str, experiment: str) -> str:
    """Which controls ``stored_control_tables`` compared ``experiment`` (suppress, update, erase) with on
    ``model``: ``NON_KN`` (no knowledge neuron of any fact of the sample; signed activation match) or
    ``OWN_ONLY`` (the fact's own knowledge neurons avoided, |activation| matched; the runs committed before).
    Read from the committed ``CONTROL_RUNS`` when no table of them was read yet, so the answer does not
    depend on what a page loaded first."""
    key = (model, _EXPERIMENT_OF.get(experiment, experiment))
    if key not in _USED and key[1] != "erase" and key[1] in CONTROL_RUNS.get(model, {}):
        stored_control_tables({model: {key[1]: CONTROL_RUNS[model][key[1]]}})
    return _USED.get(key, OWN_ONLY)


def control_pool_text(model: str, experiment: str) -> str:
    """The two matched controls ``experiment`` was compared with on ``model`` (``control_definition``), in
    words: what each one matches and which neurons it may not use."""
    where = "on the edited prompt" if experiment == "update" else "over the fact's prompts"
    if control_definition(model, experiment) == NON_KN:
        return ("for each knowledge neuron a random neuron of the same layer, and the neuron of the same layer "
                f"whose signed activation {where} is closest; neither may be a knowledge neuron of any fact of "
                "the sample")
    return ("for each knowledge neuron a random neuron of the same layer, and the neuron of the same layer whose "
            "mean activation over the fact's prompts is closest in magnitude; neither may be one of the fact's own "
            "knowledge neurons, though either may be another fact's")


def _prefer_non_kn(table: pd.DataFrame, column: str, extra: pd.DataFrame | None = None) -> tuple[pd.DataFrame, bool]:
    """``table`` with its non-KN control rows (its own, or ``extra``'s: a run that repeated the same edits on
    them) under the controls' names, in place of the controls that avoid only the fact's own knowledge
    neurons; unchanged when it has none."""
    from ..experiments.controls import NON_KN_CONTROLS

    if extra is not None and set(NON_KN_CONTROLS) & set(extra[column]):
        table = pd.concat([table, extra[extra[column].isin(NON_KN_CONTROLS)]], ignore_index=True)
    if not set(NON_KN_CONTROLS) <= set(table[column]):
        return table, False
    table = table[~table[column].isin(CONTROL_SETS)]
    return table.assign(**{column: table[column].replace({f"{c}-non-kn": c for c in CONTROL_SETS})}), True


def stored_control_tables(runs: dict[str, dict[str, int | None]] | None = None) -> tuple[dict[str, dict[str, pd.DataFrame]], list[str]]:
    """The committed tables of ``runs`` (default ``CONTROL_RUNS``; each read from ``control_sample``) that
    hold control rows, as ``effects`` and ``control_claims`` take them, and a line for each one that does
    not (not run yet). Where the non-KN controls are committed (``experiments.controls``; for an update, by
    the run with ``--controls non-kn``, whose knowledge-neuron edits are the same) they replace the earlier
    controls under the same names; ``control_definition`` says which served."""
    import dataclasses

    tables: dict[str, dict[str, pd.DataFrame]] = {}
    missing = []
    for model, experiments in (runs or CONTROL_RUNS).items():
        for name, size in experiments.items():
            stage = _STAGES[name]
            sample = control_sample(model, name, size)
            table, status = sample.committed(stage)
            if table is not None and name != "erase":  # the erasure avoids every KN of its relation already
                extra = None
                if name == "update":
                    extra, _ = dataclasses.replace(sample, params=sample.params + (("controls", "non-kn"),)).committed(stage)
                table, used = _prefer_non_kn(table, "neuron_set" if name == "update" else "method", extra)
                _USED[(model, name)] = NON_KN if used else OWN_ONLY
            if table is None:
                missing.append(f"{model}: {stage} on known facts {status}")
                continue
            column = "neuron_set" if name == "update" else "method"
            if column not in table or not set(CONTROL_SETS) & set(table[column]):
                missing.append(f"{model}: {stage} on known facts has no control rows yet "
                               + (f"({sample.progress(stage)})" if status else f"(`kn {stage}` computes them)"))
                continue
            if status:  # one control finished, another not: the finished one is compared
                missing.append(f"{model}: {stage} on known facts: controls {status}")
            tables.setdefault(model, {})[name] = table
    return tables, missing


# -- are a fact's neurons the same across its paraphrases? ---------------------------------------------


def consistency_of(sample) -> "ConsistencyResult":
    """``experiments.paraphrase_consistency`` of a committed sample (a ``BookSample``): its attribution's
    coarse sets at the run's threshold, its usable prompts and its refined neurons."""
    from ..experiments.paraphrase_consistency import paraphrase_consistency
    from ..run.search_stages import above_threshold

    coarse = above_threshold(sample.load("attribute", "coarse"), sample.settings().config.coarse_threshold)
    result = paraphrase_consistency(coarse, sample.load("attribute", "prompts"), sample.load("refine"))
    for frame in (result.by_fact, result.by_neuron):
        frame["model"] = sample.model
    return result


def _spearman(frame: pd.DataFrame, x: str, y: str) -> float:
    if len(frame) < 3 or frame[x].nunique() < 2 or frame[y].nunique() < 2:
        return float("nan")
    return float(frame[x].rank().corr(frame[y].rank()))


def rank_correlation(frame: pd.DataFrame, x: str, y: str, n_boot: int = 1000, seed: int = 0) -> Interval:
    """Spearman's rank correlation of ``x`` and ``y`` over the rows (one per fact), with a 95 % bootstrap
    interval that resamples facts."""
    sel = frame[[x, y]].dropna()
    return bootstrap_ci(sel, lambda f: _spearman(f, x, y), None, n_boot=n_boot, seed=seed)
