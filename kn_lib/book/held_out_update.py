"""Does an edit reach the prompts its knowledge neurons were not chosen on? Table 6 on held-out prompts.

``kn held-out-update`` (``run.held_out_update_stage``) edits each fact through knowledge neurons refined
on a seeded half of its prompts, judges the edit on a prompt of that half, and reads every other prompt
of the fact, each tagged with its half. One edit is therefore read on in-sample paraphrases (the rest of
the selection half) and on held-out ones: a reach found only in-sample is selection on the outcome. The
readings count the paraphrases the model answered correctly before the edit, as the edited prompt must
be, and resample relations (the facts of a relation share neurons; the update controls resample so too):

* ``reach_by_half``: per neuron set and half, the mean over edits of the share of paraphrases whose top-1
  is the new answer after the edit (%);
* ``reach_retention``: the knowledge neurons' held-out reach over their in-sample reach
  (``bootstrap.group_mean_ratio``), judged by ``claims.retention_verdict``;
* ``held_out_reach_controls``: knowledge neurons minus each control on the held-out paraphrases, paired by
  edit, judged by ``controls.beats_control``.
"""

from __future__ import annotations

import pandas as pd

from ..models import short_name
from .bootstrap import VERDICT_BOOT, bootstrap_ci, group_mean_ratio, row_mean
from .claims import retention_verdict
from .controls import CONTROL_SETS, KNOWLEDGE, beats_control, paired_differences

# The known-facts samples with a committed ``kn held-out-update`` run: model -> facts per relation (None:
# the preset's). Gemma 3 270M has none: with at most 8 bags per relation the official select_kn keeps no neuron.
HELD_OUT_UPDATE_RUNS: dict[str, int | None] = {"smollm2-135m": None}
EDITS_PER_RELATION = 30  # the known-facts preset's (``kn held-out-update --preset known-facts``), not Table 6's 10
HALVES = {"selection": "in-sample", "held-out": "held-out"}  # the halves' names, as a reader reads them
REACH_COLUMNS = ["model", "neuron_set", "half", "estimate", "ci_low", "ci_high", "n_edits", "n_relations"]
RETENTION_COLUMNS = ["model", "in_sample", "held_out", "retained", "ci_low", "ci_high", "n_relations", "verdict"]
CONTROL_COLUMNS = ["model", "control", "estimate", "ci_low", "ci_high", "n_relations", "verdict"]


def stored_held_out_update(runs: dict[str, int | None] | None = None) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """model -> its committed held-out update ``paraphrases`` (the non-KN controls under the controls'
    names, with each edit's relation), and one line for each model whose run is not committed."""
    from . import known_facts_sample

    tables, missing = {}, []
    for model, size in (HELD_OUT_UPDATE_RUNS if runs is None else runs).items():
        sample = known_facts_sample(model, size, (("edits_per_relation", EDITS_PER_RELATION),))
        paraphrases, why = sample.committed("held-out-update", "paraphrases")
        edits, _ = sample.committed("held-out-update")
        if paraphrases is None or edits is None:
            missing.append(f"{model}: {why}")
            continue
        relation = edits.drop_duplicates(["fact_id", "edit"]).set_index(["fact_id", "edit"])["relation"]
        para = paraphrases.join(relation, on=["fact_id", "edit"])
        tables[model] = para.assign(neuron_set=para["neuron_set"].str.replace("-non-kn", "", regex=False))
    return tables, missing


def per_edit(paraphrases: pd.DataFrame) -> pd.DataFrame:
    """One row per (relation, edit, neuron set, half): ``reach``, the % of the edit's paraphrases in that half
    that the model answered correctly before and that give the new answer after; halves without such a
    paraphrase are left out."""
    known = paraphrases[paraphrases["correct_before"].astype(bool)]
    out = (known.groupby(["relation", "edit", "neuron_set", "half"], sort=True)["success"].mean() * 100).rename("reach")
    return out.reset_index().assign(unit=lambda f: f["relation"] + "/" + f["edit"].astype(str))


def reach_by_half(tables: dict[str, pd.DataFrame], n_boot: int = VERDICT_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per model, neuron set and half: the mean reach over edits (%), its 95% interval with relations
    resampled, and how many edits and relations it rests on."""
    rows = []
    for model, table in tables.items():
        for (name, half), g in per_edit(table).groupby(["neuron_set", "half"], sort=True):
            ci = bootstrap_ci(g, row_mean("reach"), "relation", n_boot=n_boot, seed=seed)
            rows.append({"model": model, "neuron_set": name, "half": half, "estimate": ci.estimate, "ci_low": ci.low,
                         "ci_high": ci.high, "n_edits": len(g), "n_relations": ci.n_clusters})
    return pd.DataFrame(rows, columns=REACH_COLUMNS)


def reach_retention(tables: dict[str, pd.DataFrame], n_boot: int = VERDICT_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per model: the knowledge neurons' mean reach on each half (%), held-out over in-sample with its
    interval (relations resampled, both halves of a relation together) and ``claims.retention_verdict``."""
    rows = []
    for model, table in tables.items():
        kn = per_edit(table)
        kn = kn[kn["neuron_set"] == KNOWLEDGE]
        ci = bootstrap_ci(kn, group_mean_ratio("reach", "half", "held-out", "selection"), "relation", n_boot=n_boot, seed=seed)
        means = kn.groupby("half")["reach"].mean()
        rows.append({"model": model, "in_sample": means.get("selection", float("nan")),
                     "held_out": means.get("held-out", float("nan")), "retained": ci.estimate, "ci_low": ci.low,
                     "ci_high": ci.high, "n_relations": ci.n_clusters, "verdict": retention_verdict(ci)})
    return pd.DataFrame(rows, columns=RETENTION_COLUMNS)


def held_out_reach_controls(tables: dict[str, pd.DataFrame], n_boot: int = VERDICT_BOOT, seed: int = 0) -> pd.DataFrame:
    """Per model and control, on the held-out paraphrases: knowledge neurons minus control (points of reach,
    paired by edit), its interval over relations and ``controls.beats_control``."""
    rows = []
    for model, table in tables.items():
        held = per_edit(table)
        held = held[held["half"] == "held-out"]
        for control in CONTROL_SETS:
            diffs = paired_differences(held, "reach", "unit", "relation", control)
            if diffs.empty:
                continue
            ci = bootstrap_ci(diffs, row_mean("diff"), "relation", n_boot=n_boot, seed=seed)
            rows.append({"model": model, "control": control, "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                         "n_relations": ci.n_clusters, "verdict": beats_control(ci, +1)})
    return pd.DataFrame(rows, columns=CONTROL_COLUMNS)


SET_NAMES = {KNOWLEDGE: "knowledge neurons", "random": "random, any layer", "random-layer": "random, same layer",
             "activation-matched": "activation-matched"}
_MEANING = {"kept held out": "the edit reaches held-out prompts as far as in-sample ones: not selection on the outcome",
            "lost held out": "the edit reaches held-out prompts much less than in-sample ones: selection on the outcome",
            "undetermined": "the interval is too wide to say whether held-out prompts keep the reach",
            "borderline": "whether held-out prompts keep the reach is borderline",
            "no data": "too few relations to decide whether held-out prompts keep the reach"}


def reach_table(reach: pd.DataFrame) -> pd.DataFrame:
    """``reach_by_half`` as a page shows it: per model and neuron set, the reach on each half with its
    interval in one cell, and the edits and relations of the held-out half."""
    from .tables import interval_text

    rows = []
    for (model, name), g in reach.groupby(["model", "neuron_set"], sort=False):
        by = g.set_index("half")
        cell = {h: (interval_text(*by.loc[h, ["estimate", "ci_low", "ci_high"]]) if h in by.index else "—") for h in HALVES}
        n = by.loc["held-out"] if "held-out" in by.index else by.iloc[0]
        rows.append({"model": short_name(model), "neurons": SET_NAMES.get(name, name), "in-sample reach (%)": cell["selection"],
                     "held-out reach (%)": cell["held-out"], "edits": int(n["n_edits"]), "relations": int(n["n_relations"])})
    columns = ["model", "neurons", "in-sample reach (%)", "held-out reach (%)", "edits", "relations"]
    order = {name: i for i, name in enumerate(SET_NAMES.values())}
    return pd.DataFrame(rows, columns=columns).sort_values(["model", "neurons"], key=lambda c: c.map(order) if c.name == "neurons" else c,
                                          kind="stable").reset_index(drop=True)


def retention_table(kept: pd.DataFrame, controls: pd.DataFrame) -> pd.DataFrame:
    """The two held-out verdicts as a page shows them: held-out over in-sample reach, and knowledge neurons
    minus each control on held-out prompts, each with its interval, n and verdict."""
    from .tables import interval_text

    rows = [{"model": short_name(r.model), "comparison": "held-out reach ÷ in-sample reach (knowledge neurons)",
             "estimate [95% CI]": interval_text(r.retained, r.ci_low, r.ci_high), "relations": int(r.n_relations),
             "verdict": r.verdict} for r in kept.itertuples()]
    rows += [{"model": short_name(r.model), "comparison": f"knowledge neurons minus {SET_NAMES.get(r.control, r.control)}, held-out (points)",
              "estimate [95% CI]": interval_text(r.estimate, r.ci_low, r.ci_high, signed=True), "relations": int(r.n_relations),
              "verdict": r.verdict} for r in controls.itertuples()]
    return pd.DataFrame(rows, columns=["model", "comparison", "estimate [95% CI]", "relations", "verdict"])


def held_out_update_reading(kept: pd.DataFrame, controls: pd.DataFrame, model: str, name: str | None = None) -> str:
    """The held-out update of one model (called ``name``) in one sentence, the verdicts choosing the words:
    the reach on each half, what their ratio says, and how the held-out reach compares with the controls."""
    from .tables import interval_text
    from .wording import plural

    name = name or model
    rows = kept[kept["model"] == model]
    if rows.empty:
        return f"the held-out update of {name} is not committed"
    r = rows.iloc[0]
    sentence = (f"an edit through knowledge neurons chosen on half of each fact's prompts gives the new answer on "
                f"{r.in_sample:.1f}% of the fact's other in-sample prompts and {r.held_out:.1f}% of its held-out ones "
                f"(ratio {interval_text(r.retained, r.ci_low, r.ci_high)}, {plural(int(r.n_relations), 'relation')}): "
                f"{_MEANING[r.verdict]}")
    mine = controls[controls["model"] == model]
    if mine.empty:
        return sentence
    beats = mine[mine["verdict"] == "beats its control"]
    decided = mine[mine["verdict"] != "no data"]
    if decided.empty:
        return sentence + "; against the controls on held-out prompts there are too few relations to decide"
    if len(beats) == len(mine):
        return sentence + "; on held-out prompts it beats every control"
    return sentence + f"; on held-out prompts it beats {len(beats)} of {len(mine)} controls"
