"""The book's "Is it knowledge?" chapter: the committed results of the three critiques, their effects
with intervals over the unit each averages (facts; grammar groups), and their rows in the claims table.

* localization vs editing (``edit-localization``): R^2 of edit success on layer fixed effects, with and
  without the fact's attribution share at that layer (``experiments.edit_localization``); the edit at the
  fact's own knowledge-neuron layer against its other layers;
* grammar (``grammar``): suppressing agreement "knowledge neurons" beside matched controls, and the same
  model's factual knowledge neurons for comparison;
* symmetry (``symmetry``): does the reverse fact follow a knowledge-neuron edit, against its controls?
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from .claims import MIN_CLUSTERS, Interval, bootstrap_ci, row_mean
from .wording import plural
from .controls import CONTROL_SETS, KNOWLEDGE, beats_control, paired_differences
from .tables import INTERVAL, with_interval  # noqa: F401  (the critiques chapter calls them from here)

# model -> known-facts run (facts per relation) each critique reads; grammar reads BLiMP, not a sample
CRITIQUE_RUNS: dict[str, dict[str, int | None]] = {
    "smollm2-135m": {"edit-localization": None, "symmetry": 48},  # None: the known-facts default (30)
    "gemma3-270m": {"edit-localization": 8, "symmetry": 8},
}
GRAMMAR_PARADIGMS = "determiner-noun"  # kn grammar --paradigms (the set the book runs)
SIGNED = "symmetry, sign-aware"  # the symmetric edits again with our sign-aware edit (kn symmetry --sign-aware yes)
SUBJECT_VERB = "grammar, subject-verb"  # BLiMP's subject-verb agreement paradigms (kn grammar --paradigms subject-verb)
TOP_IG, RANDOM_LAYER = "top-ig", "random-layer"  # edit-localization's neuron sets
OUTCOMES = {"success": "edit success (top-1 is t')", "delta_p_new": "rise of p(t')"}


def stored_critique_tables(runs: dict[str, dict[str, int | None]] | None = None,
                           paradigms: str = GRAMMAR_PARADIGMS) -> tuple[dict[str, dict[str, pd.DataFrame]], list[str]]:
    """model -> {"edit-localization": table, "symmetry": table, ``SIGNED``: table, "grammar": table,
    ``SUBJECT_VERB``: table} as committed, and a line for each one that is not (yet)."""
    from . import known_facts_sample

    tables: dict[str, dict[str, pd.DataFrame]] = {}
    missing = []

    def keep(model: str, name: str, table: pd.DataFrame | None, run: str) -> None:
        if table is None:
            missing.append(f"{model}: {run} not run")
        else:
            tables.setdefault(model, {})[name] = table

    for model, stages in (runs or CRITIQUE_RUNS).items():
        for stage, size in stages.items():
            sample = known_facts_sample(model, size)
            keep(model, stage, committed(lambda: sample.load(stage, "table")), f"`kn {stage}` on known facts")
            if stage == "symmetry":
                keep(model, SIGNED, committed(lambda: sample.load(stage, "table", params={"sign_aware": "yes"})),
                     "`kn symmetry --sign-aware yes` on known facts")
        keep(model, "grammar", grammar_table(model, paradigms), f"`kn grammar --paradigms {paradigms}`")
        keep(model, SUBJECT_VERB, grammar_table(model, "subject-verb"), "`kn grammar --paradigms subject-verb`")
    return tables, missing


def committed(load: Callable[[], pd.DataFrame]) -> pd.DataFrame | None:
    """``load()``'s table, or None when the run is not committed or no shard of it has finished yet."""
    from ..run import results

    try:
        frame = load()
    except results.ResultsNotFound:
        return None
    return None if frame.empty else frame


def grammar_table(model: str, paradigms: str = GRAMMAR_PARADIGMS, table: str = "table") -> pd.DataFrame | None:
    """A committed ``kn grammar --paradigms PARADIGMS`` table of ``model``, or None when none is finished."""
    from ..run import results

    return committed(lambda: results.load(model, "grammar", table, preset="book-sample", params={"paradigms": paradigms}))


# -- 1. does localization inform editing? -----------------------------------------------------------


LOCALIZATIONS = {"mass_share": "attribution share of the layer", "is_kn_layer": "the fact's knowledge-neuron layer (0/1)"}


def localization_fit(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per outcome (``OUTCOMES``) and localization (``LOCALIZATIONS``: the attribution share, Hase et al.'s
    tracing score's stand-in, and the 0/1 "this is the fact's knowledge-neuron layer"): R^2 of layer fixed
    effects alone, with the localization added, the increment with its bootstrap interval over facts, and
    n (facts, (fact, layer) rows)."""
    from ..experiments.edit_localization import layer_r2, r2_increment_interval

    rows = []
    top = table[table["neuron_set"] == TOP_IG]
    top = top.assign(is_kn_layer=top["is_kn_layer"].astype(float))
    for outcome, label in OUTCOMES.items():
        for localization, where in LOCALIZATIONS.items():
            fit = layer_r2(top, outcome, localization)
            estimate, low, high = r2_increment_interval(top, outcome, localization, n_boot=n_boot, seed=seed)
            rows.append({"outcome": label, "localization": where, "r2_layer": fit["r2_layer"],
                         "r2_layer_localization": fit["r2_layer_localization"], "r2_increment": estimate, "ci_low": low,
                         "ci_high": high, "n_facts": fit["n_facts"], "n_rows": fit["n_rows"]})
    return pd.DataFrame(rows)


def by_layer(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer and neuron set: mean success (%), mean rise of p(t') and mean attribution share; n facts."""
    out = (table.groupby(["layer", "neuron_set"])
           .agg(success=("success", "mean"), delta_p_new=("delta_p_new", "mean"), mass_share=("mass_share", "mean"),
                n=("fact_id", "nunique"))
           .reset_index())
    out["success"] *= 100
    return out


LAYER_MATCHED, VERSUS_RANDOM = "own layer vs other facts at that layer", "top-ig vs random-layer at the own layer"


def kn_layer_comparison(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Two paired questions, each a mean over facts with a bootstrap interval over facts, in points of
    success: ``LAYER_MATCHED`` (top-ig success at the fact's knowledge-neuron layer minus that of the other
    facts edited at the same layer, whose knowledge neurons lie elsewhere: ``layer_matched_advantage``;
    a fact's own layer against its other layers would mix in depth, since the bottom layers take no edit)
    and ``VERSUS_RANDOM`` (at the knowledge-neuron layer, the fact's top neurons minus as many random
    neurons of that layer)."""
    from ..experiments.edit_localization_fit import layer_matched_advantage

    matched = layer_matched_advantage(table[table["neuron_set"] == TOP_IG], "success")
    own = table[table["is_kn_layer"].astype(bool)].pivot_table(index="fact_id", columns="neuron_set", values="success", aggfunc="mean")
    versus_random = ((own[TOP_IG] - own[RANDOM_LAYER]).dropna().rename("diff").reset_index()
                     if {TOP_IG, RANDOM_LAYER} <= set(own.columns) else pd.DataFrame(columns=["fact_id", "diff"]))
    rows = []
    for name, frame, column in ((LAYER_MATCHED, matched, "difference"), (VERSUS_RANDOM, versus_random, "diff")):
        ci = bootstrap_ci(frame, row_mean(column, scale=100), "fact_id", n_boot=n_boot, seed=seed)
        rows.append({"comparison": name, "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, "n": ci.n_clusters,
                     "verdict": beats_control(ci, +1)})
    return pd.DataFrame(rows)


# -- 2. grammar localises like facts? -----------------------------------------------------------------


def grammar_by_group(table: pd.DataFrame) -> pd.DataFrame:
    """Per group (the grammar's "fact") and neuron set: accuracy before and after suppression (%), the
    share of correct pairs that flip (%), and the relative change of p(target) over the group's pairs (%),
    as Figure 4 measures a fact's: the ratio of means (``suppress_amplify.change_ratio``), so that a few
    near-zero probabilities do not dominate."""
    from ..experiments.suppress_amplify import change_ratio

    grouped = table.groupby(["paradigm", "group", "fact_id", "neuron_set"])
    out = grouped.agg(accuracy_before=("correct_before", "mean"), accuracy_after=("correct_after", "mean"),
                      n_pairs=("pair_id", "nunique")).reset_index()
    ratios = grouped.apply(lambda g: 100 * change_ratio(g["p_target_before"], g["p_target_after"]), include_groups=False)
    out["p_change"] = ratios.to_numpy() if len(out) else pd.Series(dtype=float)
    flips = table[table["correct_before"].astype(bool)].groupby(["fact_id", "neuron_set"])["flip"].mean().rename("flip_rate").reset_index()
    out = out.merge(flips, on=["fact_id", "neuron_set"], how="left")
    for column in ("accuracy_before", "accuracy_after", "flip_rate"):
        out[column] *= 100
    return out[["paradigm", "group", "fact_id", "neuron_set", "accuracy_before", "accuracy_after", "p_change", "n_pairs",
                "flip_rate"]]


GRAMMAR_MEASURES = {"p_change": "% change of p(target)", "flip_rate": "% of correct pairs flipped",
                    "accuracy_after": "accuracy after suppression (%)"}


def grammar_effects(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per measure and neuron set: the mean over groups with a bootstrap interval over groups, and per
    control the paired knowledge-minus-control difference with ``beats_control`` (suppression should
    lower p and accuracy and raise flips)."""
    groups = grammar_by_group(table)
    rows = []
    for measure, label in GRAMMAR_MEASURES.items():
        expected = +1 if measure == "flip_rate" else -1
        sel = groups[groups[measure].notna()]
        for name in (KNOWLEDGE, *CONTROL_SETS):
            part = sel[sel["neuron_set"] == name]
            ci = bootstrap_ci(part, row_mean(measure), "fact_id", n_boot=n_boot, seed=seed)
            rows.append({"measure": label, "neuron_set": name, "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                         "n": ci.n_clusters, "verdict": ""})
        for control in CONTROL_SETS:
            diffs = paired_differences(sel, measure, "fact_id", "fact_id", control)
            ci = bootstrap_ci(diffs, row_mean("diff"), "fact_id", n_boot=n_boot, seed=seed)
            rows.append({"measure": label, "neuron_set": f"knowledge − {control}", "estimate": ci.estimate, "ci_low": ci.low,
                         "ci_high": ci.high, "n": ci.n_clusters, "verdict": beats_control(ci, expected)})
    return pd.DataFrame(rows)


# -- 3. symmetry and inverse relations ------------------------------------------------------------------


SYMMETRY_MEASURES = {"success": "edit success (top-1 is Y')", "new_reverse_after": "reverse holds after (Y' r X)",
                     "new_reverse_gain": "gain of the reverse (after − before)", "old_reverse_after": "old reverse kept (Y r X)"}


def symmetry_effects(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per measure and neuron set: the mean over edited facts (%) with a bootstrap interval over facts,
    and per control the paired difference with ``beats_control`` (the reverse should gain)."""
    frame = table.assign(success=table["success"].astype(float),
                         new_reverse_gain=table["new_reverse_after"] - table["new_reverse_before"])
    rows = []
    for measure, label in SYMMETRY_MEASURES.items():
        for name in (KNOWLEDGE, *CONTROL_SETS):
            part = frame[frame["neuron_set"] == name]
            ci = bootstrap_ci(part, row_mean(measure, scale=100), "fact_id", n_boot=n_boot, seed=seed)
            rows.append({"measure": label, "neuron_set": name, "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                         "n": ci.n_clusters, "verdict": ""})
        if measure in ("success", "new_reverse_gain"):
            for control in CONTROL_SETS:
                diffs = paired_differences(frame, measure, "fact_id", "fact_id", control)
                ci = bootstrap_ci(diffs, row_mean("diff", scale=100), "fact_id", n_boot=n_boot, seed=seed)
                rows.append({"measure": label, "neuron_set": f"knowledge − {control}", "estimate": ci.estimate,
                             "ci_low": ci.low, "ci_high": ci.high, "n": ci.n_clusters, "verdict": beats_control(ci, +1)})
    return pd.DataFrame(rows)


def interval_of(frame: pd.DataFrame, **where) -> Interval:
    """The row of an effects table selected by column values, as an ``Interval`` (for ``claim_row``)."""
    sel = frame
    for column, value in where.items():
        sel = sel[sel[column] == value]
    if len(sel) != 1:
        raise KeyError(f"{len(sel)} rows match {where}")
    row = sel.iloc[0]
    return Interval(float(row["estimate"]), float(row["ci_low"]), float(row["ci_high"]), int(row["n"]), 1000, 0.95, 0)


def as_control_effects(effects: pd.DataFrame, intervention: str, unit: str, n_unit: str) -> pd.DataFrame:
    """The per-set rows of ``grammar_effects`` / ``symmetry_effects`` shaped as ``controls.effects`` rows,
    so that ``plots.control_bars`` draws them like the paper's interventions."""
    sets = effects[~effects["neuron_set"].str.contains(" − ")]
    return pd.DataFrame({"intervention": intervention, "measure": sets["measure"], "neuron_set": sets["neuron_set"],
                         "unit": unit, "estimate": sets["estimate"], "ci_low": sets["ci_low"], "ci_high": sets["ci_high"],
                         "n": sets["n"], "n_unit": n_unit})


# -- the critiques' rows of the claims table ------------------------------------------------------------

CRITIQUE = "critique re-tested"  # the ``kind`` of these claim rows (beside the paper's metrics and our variants)


REVERSE_KNOWN = 0.5  # share of the old reverse's prompts (Y r^-1 X) answered X before the edit: above it, testable
DNA2 = "determiner_noun_agreement_2"  # the BLiMP paradigm of Niu et al.'s number


def symmetry_given_success(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0, testable: bool = True) -> Interval:
    """The symmetry criterion proper: among knowledge-neuron edits that succeeded (the edited prompt now
    answers Y'), the mean share of reverse prompts (Y', r^-1) answering X after the edit (%), with a
    bootstrap interval over those edits' facts. ``testable`` keeps only the edits whose reverse the model
    knew before (more than ``REVERSE_KNOWN`` of the old reverse's prompts, Y r^-1 X, answered X): a model
    that never answered the reverse cannot be asked to carry an edit over to it."""
    done = table[(table["neuron_set"] == KNOWLEDGE) & table["success"].astype(bool)]
    if testable:
        done = done[done["old_reverse_before"] > REVERSE_KNOWN]
    return bootstrap_ci(done, row_mean("new_reverse_after", scale=100), "fact_id", n_boot=n_boot, seed=seed)


def symmetry_reading(succeeded: Interval, testable: Interval) -> str:
    """The chapter's clause on the reverse after successful edits: ``succeeded`` and ``testable`` are
    ``symmetry_given_success`` without and with the testable filter."""
    if succeeded.n_clusters == 0:
        return "no knowledge-neuron edit succeeded, so none can carry over to the reverse"
    n, t = succeeded.n_clusters, testable.n_clusters
    them = "it" if n == 1 else "them"
    text = (f"{plural(n, 'knowledge-neuron edit')} succeeded, and afterwards the reverse holds on "
            f"{succeeded.estimate:.1f}% [{succeeded.low:.1f}, {succeeded.high:.1f}] of its prompts")
    if t == 0:
        return text + f"; but the model answered the reverse of none of {them} before the edit: not testable"
    if t < MIN_CLUSTERS:
        return text + f"; but the model answered the reverse before the edit for only {t} of {them}: not testable"
    return text + (f"; among the {t} whose reverse the model answered before, "
                   f"{testable.estimate:.1f}% [{testable.low:.1f}, {testable.high:.1f}]")


def grammar_accuracy_changes(table: pd.DataFrame) -> pd.DataFrame:
    """Per group of the knowledge-neuron rows: its paradigm, the change of accuracy when its neurons are
    zeroed (after - before, points) and that change's size (a rise counts as much as a fall)."""
    groups = grammar_by_group(table)
    mine = groups[groups["neuron_set"] == KNOWLEDGE]
    change = mine["accuracy_after"] - mine["accuracy_before"]
    return mine[["paradigm", "group", "fact_id", "n_pairs"]].assign(change=change, size=change.abs()).reset_index(drop=True)


def critique_claims(tables: dict[str, dict[str, pd.DataFrame]], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per model, claim rows (``claims.claim_row``, kind ``CRITIQUE``) for each critique's published finding,
    judged by the same rules as the paper's claims. Every one is a ceiling claim: the critics found the
    effect *small*, so ours supports them when its whole interval lies below their number.

    * Hase et al.: adding localization to the edit layer raises R^2 of edit success by at most their
      largest increment (ours: the increment, facts resampled; it cannot be negative);
    * Niu et al.: zeroing agreement "knowledge neurons" changes agreement accuracy by at most the 5.2 points
      of their DNA.2 (ours: the mean size of each group's change, resampled by paradigm: over every
      agreement paradigm when ``SUBJECT_VERB`` is committed, over the determiner-noun ones, and DNA.2
      alone, resampled by group);
    * Niu et al.: after an edit that succeeds, the reverse fact follows at most as often as it did for ROME
      in their Table 1, among edits whose reverse the model answered before (they published no symmetry
      number for knowledge-neuron edits).
    """
    from ..experiments.edit_localization import layer_r2, r2_increment_interval
    from .claims import CLAIM_COLUMNS, claim_row
    from .paper import CRITICS, critic_value

    niu = CRITICS["niu_dna2_correct_change"]
    rows = []
    for model, found in tables.items():
        if "edit-localization" in found:
            top = found["edit-localization"]
            top = top[top["neuron_set"] == TOP_IG]
            estimate, low, high = r2_increment_interval(top, "success", n_boot=n_boot, seed=seed)
            ours = Interval(estimate, low, high, layer_r2(top)["n_facts"], n_boot, 0.95, seed)
            rows.append({"model": model, **claim_row("localization adds at most this to the layer's R^2 of edit success",
                                  CRITICS["hase_max_added_r2"].where, critic_value("hase_max_added_r2"), ours,
                                  unit="R^2", kind=CRITIQUE, ceiling=True,
                                  note="ours: binary success, attribution share; theirs: largest increment (FT-5, "
                                       "Fact Forcing), rewrite score, GPT-J")})
        if "grammar" in found:
            changes = grammar_accuracy_changes(found["grammar"])
            scopes = [(f"{changes['paradigm'].nunique()} determiner-noun paradigms", changes, "paradigm", "paradigms"),
                      ("DNA.2", changes[changes["paradigm"] == DNA2], "fact_id", "groups")]
            if SUBJECT_VERB in found:
                every = pd.concat([changes, grammar_accuracy_changes(found[SUBJECT_VERB])], ignore_index=True)
                scopes.insert(0, (f"{every['paradigm'].nunique()} agreement paradigms", every, "paradigm", "paradigms"))
            for scope, part, cluster, unit in scopes:
                ours = bootstrap_ci(part, row_mean("size"), cluster, n_boot=n_boot, seed=seed)
                rows.append({"model": model, **claim_row(
                    f"zeroing agreement neurons changes BLiMP accuracy by at most this many points ({scope})",
                    niu.where, abs(niu.value), ours, unit="points", kind=CRITIQUE, ceiling=True,
                    note=f"ours: zeroing each group's refined neurons, {unit} resampled; theirs: their KN edit, DNA.2, "
                         "bert-base-cased")})
        for name, edit in (("symmetry", "the paper's edit"), (SIGNED, "our sign-aware edit")):
            if name not in found:
                continue
            ours = symmetry_given_success(found[name], n_boot, seed)
            rows.append({"model": model, **claim_row("after a successful edit the reverse fact holds at most as often as for ROME",
                                  CRITICS["niu_rome_gpt2xl_p36_symmetry"].where, critic_value("niu_rome_gpt2xl_p36_symmetry"),
                                  ours, unit="%", kind=CRITIQUE, ceiling=True,
                                  note=("not testable: " if ours.n_clusters < MIN_CLUSTERS else "") +
                                       f"ours: {edit}, {plural(ours.n_clusters, 'successful edit')} whose reverse "
                                       "the model answered before; theirs: ROME on GPT-2 XL, P36")})
    return pd.DataFrame(rows, columns=["model", *CLAIM_COLUMNS])


def grammar_vs_facts(grammar: pd.DataFrame, suppress: pd.DataFrame | None, model: str, n_boot: int = 1000,
                     seed: int = 0) -> pd.DataFrame:
    """The same model's suppression of agreement neurons (per group) beside that of its factual knowledge
    neurons (per fact, ``controls.effects`` of the suppress-amplify table): p change (%) and the share of
    correct answers lost (%), for knowledge neurons and the activation-matched control, with n."""
    from .controls import effects

    pairs = {"% change of p(target)": "p(answer) change", "% of correct pairs flipped": "correct answers lost"}
    ours = grammar_effects(grammar, n_boot, seed)
    rows = []
    for grammar_measure, fact_measure in pairs.items():
        for name in (KNOWLEDGE, "activation-matched"):
            g = ours[(ours["measure"] == grammar_measure) & (ours["neuron_set"] == name)].iloc[0]
            rows.append({"model": model, "what": "agreement (BLiMP groups)", "measure": fact_measure, "neuron_set": name,
                         "estimate": g["estimate"], "ci_low": g["ci_low"], "ci_high": g["ci_high"], "n": g["n"], "unit": "groups"})
    if suppress is not None:
        facts = effects({model: {"suppress": suppress}}, n_boot, seed)
        facts = facts[(facts["intervention"] == "suppress") & facts["neuron_set"].isin([KNOWLEDGE, "activation-matched"])]
        rows += [{"model": model, "what": "facts (known, PARAREL)", "measure": r.measure, "neuron_set": r.neuron_set,
                  "estimate": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "unit": "facts"}
                 for r in facts.itertuples()]
    return pd.DataFrame(rows)
