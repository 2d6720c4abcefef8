"""Does the layer a fact is localised in predict where editing it works? The regressions of Hase et al.
(NeurIPS 2023, "Does Localization Inform Editing?", section 4), on an ``edit_localization`` table.

Hase et al. regress ROME's edit success on the edit layer (fixed effects) and on the causal-tracing score
of that layer: the layer explains most of the variance, the tracing score adds almost nothing. Here the
localization is the share of a fact's integrated-gradients mass in the layer (or any column), and the
outcome any per-(fact, layer) column: the question is whether knowing *where the fact's attribution sits*
improves on knowing *which layer was edited*. Pure functions of a table: no model needed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _top_ig(table: pd.DataFrame) -> pd.DataFrame:
    """The knowledge-neuron-style edits (``neuron_set == "top-ig"``) when the table holds several sets."""
    return table[table["neuron_set"] == "top-ig"] if "neuron_set" in table.columns else table


def _within(values: np.ndarray, codes: np.ndarray, n_levels: int) -> np.ndarray:
    """``values`` minus their layer's mean (the residual of a regression on layer fixed effects)."""
    means = np.bincount(codes, weights=values, minlength=n_levels) / np.bincount(codes, minlength=n_levels).clip(min=1)
    return values - means[codes]


def _fits(y: np.ndarray, layers: np.ndarray, loc: np.ndarray) -> tuple[float, float]:
    """(R^2 of the layer fixed effects, R^2 with the localization added) for rows y, layer, localization.

    The least-squares fits of ``layer_r2`` in closed form (Frisch-Waugh-Lovell): with fixed effects the
    residual of y is y minus its layer mean, y_w, so SS_res(layer) = sum y_w^2; adding loc leaves
    SS_res(layer + loc) = sum y_w^2 - (sum y_w loc_w)^2 / sum loc_w^2, loc_w the within-layer loc. Linear
    in the rows (no design matrix), which keeps the fact bootstrap fast. NaN when y is constant."""
    total = float(((y - y.mean()) ** 2).sum())
    if len(y) == 0 or total == 0.0:
        return float("nan"), float("nan")
    _, codes = np.unique(layers, return_inverse=True)
    n_levels = int(codes.max()) + 1
    y_w, loc_w = _within(y, codes, n_levels), _within(loc, codes, n_levels)
    ss_layer = float(y_w @ y_w)
    spread = float(loc_w @ loc_w)
    ss_both = ss_layer - (float(y_w @ loc_w) ** 2 / spread if spread > 1e-12 * max(1.0, float(loc @ loc)) else 0.0)
    return 1.0 - ss_layer / total, 1.0 - max(ss_both, 0.0) / total


def _arrays(table: pd.DataFrame, outcome: str, localization: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = _top_ig(table)
    return (rows[outcome].astype(float).to_numpy(), rows["layer"].to_numpy(), rows[localization].astype(float).to_numpy())


def layer_r2(table: pd.DataFrame, outcome: str = "success", localization: str = "mass_share") -> dict:
    r"""How much of the outcome's variance the edit layer explains, and how much localization adds.

    Two least-squares fits over the rows (f, l) of the top-ig edits (fact f edited at layer l):

        y_{f,l} = a + b_l + e                      (layer fixed effects)          -> R^2_layer
        y_{f,l} = a + b_l + c loc_{f,l} + e        (plus the localization score)  -> R^2_layer+loc

    with R^2 = 1 - SS_res / SS_tot, SS_tot = \sum (y - \bar y)^2, and r2_increment = R^2_layer+loc -
    R^2_layer (Hase et al.'s "added R^2" of the tracing effect). A boolean outcome counts as 0 / 1.
    """
    y, layers, loc = _arrays(table, outcome, localization)
    if len(y) == 0:
        r2_layer = r2_full = float("nan")
    else:
        r2_layer, r2_full = _fits(y, layers, loc)
    return {"r2_layer": r2_layer, "r2_layer_localization": r2_full, "r2_increment": r2_full - r2_layer,
            "n_facts": int(_top_ig(table)["fact_id"].nunique()), "n_rows": int(len(y))}


def r2_increment_interval(table: pd.DataFrame, outcome: str = "success", localization: str = "mass_share",
                          n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of ``layer_r2``'s r2_increment: a percentile bootstrap over facts (the facts
    are resampled with replacement and each drawn fact brings all its layers, since a fact's rows share
    its prompt and are not independent). Resamples whose outcome is constant (R^2 undefined) are left out."""
    rows = _top_ig(table)
    y, layers, loc = _arrays(rows, outcome, localization)
    estimate = layer_r2(rows, outcome, localization)["r2_increment"]
    groups = list(pd.Series(np.arange(len(rows))).groupby(rows["fact_id"].to_numpy()).indices.values())
    if not groups:
        return estimate, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        index = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        r2_layer, r2_full = _fits(y[index], layers[index], loc[index])
        boots[b] = r2_full - r2_layer
    if np.isnan(boots).all():
        return estimate, float("nan"), float("nan")
    low, high = np.nanquantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return estimate, float(low), float(high)


def kn_layer_advantage(table: pd.DataFrame, outcome: str = "success") -> pd.DataFrame:
    """Per fact (top-ig edits): the outcome when editing at its knowledge-neuron layer (``is_kn_layer``),
    the mean outcome at its other layers, and at_kn_layer - other_layers: the paired comparison of "edit
    where the knowledge neurons are" against "edit anywhere else"."""
    rows = _top_ig(table)
    out = []
    for fact_id, group in rows.groupby("fact_id", sort=False):
        at = group[group["is_kn_layer"].astype(bool)]
        other = group[~group["is_kn_layer"].astype(bool)]
        at_value = float(at[outcome].astype(float).mean()) if len(at) else float("nan")
        other_value = float(other[outcome].astype(float).mean()) if len(other) else float("nan")
        row = {"fact_id": fact_id, "relation": group["relation"].iloc[0] if "relation" in group else None,
               "kn_layer": int(at["layer"].iloc[0]) if len(at) else -1,
               "at_kn_layer": at_value, "other_layers": other_value, "difference": at_value - other_value}
        row.update({c: group[c].iloc[0] for c in ("model", "method", "seed") if c in group.columns})
        out.append(row)
    columns = ["fact_id", "relation", "kn_layer", "at_kn_layer", "other_layers", "difference"]
    return pd.DataFrame(out, columns=columns + [c for c in ("model", "method", "seed") if c in rows.columns])


LAYER_MATCHED_COLUMNS = ["fact_id", "relation", "kn_layer", "at_kn_layer", "same_layer_others", "n_others", "difference"]


def layer_matched_advantage(table: pd.DataFrame, outcome: str = "success") -> pd.DataFrame:
    """Per fact (top-ig edits): the outcome when editing at its knowledge-neuron layer L, the mean outcome
    of the *other* facts edited at that same layer L whose knowledge neurons lie elsewhere, and
    at_kn_layer - same_layer_others.

    ``kn_layer_advantage`` compares a fact's layer with its other layers, which mixes in depth: the other
    layers include the bottom ones, where no edit works. Holding the layer fixed asks only whether the
    fact's *own* layer is special for *it*. A fact whose layer no other fact is edited at (with its
    knowledge neurons elsewhere) has no comparison and is left out."""
    rows = _top_ig(table)
    if rows.empty:
        return pd.DataFrame(columns=LAYER_MATCHED_COLUMNS)
    values = rows.assign(value=rows[outcome].astype(float))
    own = values[values["is_kn_layer"].astype(bool)].groupby("fact_id")["layer"].first()
    cell = values.groupby(["layer", "fact_id"])["value"].mean()
    relation = values.groupby("fact_id")["relation"].first() if "relation" in values else None
    out = []
    for fact_id, layer in own.items():
        at = cell.get((layer, fact_id))
        others = [v for (_, f), v in cell.loc[[layer]].items() if f != fact_id and own.get(f, -1) != layer]
        if at is None or not others:
            continue
        mean_others = float(np.mean(others))
        out.append({"fact_id": fact_id, "relation": None if relation is None else relation[fact_id], "kn_layer": int(layer),
                    "at_kn_layer": float(at), "same_layer_others": mean_others, "n_others": len(others),
                    "difference": float(at) - mean_others})
    return pd.DataFrame(out, columns=LAYER_MATCHED_COLUMNS)
