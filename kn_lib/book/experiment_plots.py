"""Figures of the experiment chapters: the claims forest, Figures 4-5, erase and update outcomes,
BingRel activations, knowledge neurons against their controls, paraphrase consistency and per-layer edits
(``kn_lib.book.plots`` re-exports them; conventions there)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .plot_style import (NEURON_SET_NAMES, NEURON_SETS, OPERATION_TITLES, PALETTE, _percent_symlog,
                         _relation_order, verdict_colours)


WIDE_SPAN = 100  # a row whose values span more than this factor gets a log axis (claims_forest)


def _forest_scale(ax: Axes, values: Sequence[float], paper: float, unit: str) -> str:
    """Give one forest-plot row a scale on which both the paper's value and ours are visible, and
    return its axis label (``unit`` and the scale). A row whose values span more than ``WIDE_SPAN``
    times (a perplexity change of 1e9 against the paper's 8.4) would draw the paper's value at zero
    on a linear axis: it gets a log axis when every value is positive, else a symmetric log axis,
    linear within the paper's value."""
    finite = np.abs([v for v in values if np.isfinite(v)])
    unit = unit or "no unit"
    smallest = finite[finite > 0].min() if (finite > 0).any() else 1.0
    if len(finite) == 0 or finite.max() / smallest <= WIDE_SPAN:
        return unit
    if all(v > 0 for v in values if np.isfinite(v)):
        ax.set_xscale("log")
        return f"{unit} (log scale)"
    linthresh = abs(paper) if paper else smallest
    ax.set_xscale("symlog", linthresh=linthresh)
    return f"{unit} (symmetric log scale, linear within ±{linthresh:.3g})"


def claims_forest(claims, wrap: int = 95):
    """The claims chapter's forest plot: one row per claim (its own x scale and unit; a log scale
    where the paper's value and ours lie orders of magnitude apart), the paper's value (black
    diamond), ours with its 95% interval coloured by verdict, "no effect" dashed; one legend."""
    import textwrap

    from matplotlib.lines import Line2D

    colours = verdict_colours()
    rows = list(claims.itertuples(index=False))
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.05 * len(rows) + 1.0), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        colour = colours.get(r.verdict, "grey")
        effect = getattr(r, "test", "effect") == "effect"
        values = [r.paper, r.ours, r.ci_low, r.ci_high] + ([r.null] if effect else [])
        label = _forest_scale(ax, values, r.paper - (r.null if effect else 0.0), r.unit)
        if np.isfinite(r.ours) and np.isfinite(r.ci_low):
            ax.errorbar([r.ours], [0], xerr=[[r.ours - r.ci_low], [r.ci_high - r.ours]], fmt="o", color=colour, capsize=4)
        ax.plot([r.paper], [0], marker="D", color="black", linestyle="none")
        if effect and (ax.get_xscale() != "log" or r.null > 0):
            ax.axvline(r.null, color="grey", linewidth=0.8, linestyle="--")
        ax.set_yticks([])
        title = f"{r.claim} [{r.verdict}; n = {r.n_clusters}]"
        ax.set_title("\n".join(textwrap.wrap(title, wrap)), fontsize=9, loc="left")
        ax.set_xlabel(label, fontsize=8, labelpad=1)
        ax.tick_params(axis="x", labelsize=8)
    handles = [Line2D([], [], marker="D", color="black", linestyle="none", label="paper")]
    handles += [Line2D([], [], marker="o", color=colours[v], label=f"ours: {v}") for v in colours
                if v in set(claims["verdict"])]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="no effect"))
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (1.05 * len(rows) + 1.0)))
    return fig


def change_by_relation(
    by_relation: pd.DataFrame,
    operations: Sequence[str] = ("suppress", "amplify"),
    scope: str = "own",
    neuron_sets: dict | None = None,
    linthresh: float = 10,
    width: float = 6.9,
    row_height: float = 0.22,
) -> Figure:
    """Figures 4 and 5 side by side: for each relation (one row each, PARAREL ids in numeric order)
    the relative change of p(answer) in percent (``100 * change_ratio``), one bar per neuron set and one
    panel per operation, on a symmetric-log x axis (linear within ±``linthresh`` %); one legend above.

    ``by_relation`` is the suppress-amplify stage's table (relation, scope, operation, method,
    change_ratio); only rows of ``scope`` are drawn. ``neuron_sets`` maps a method to its legend name
    (and order; default ``NEURON_SETS``). ``width`` in inches: 6.9 is the book's text column at 100 dpi,
    where the fonts of ``use_style`` are read at their size."""
    names = dict(neuron_sets or NEURON_SETS)
    data = by_relation[by_relation["scope"] == scope]
    methods = [m for m in names if m in set(data["method"])] + sorted(set(data["method"]) - set(names))
    relations = _relation_order(data["relation"])
    colours = dict(zip(methods, sns.color_palette(PALETTE, len(methods))))
    fig, axes = plt.subplots(1, len(operations), figsize=(width, row_height * len(relations) + 1.6), sharey=True,
                             squeeze=False, layout="constrained")
    bar = 0.8 / max(len(methods), 1)
    for ax, operation in zip(axes[0], operations):
        part = data[data["operation"] == operation]
        for j, method in enumerate(methods):
            values = part[part["method"] == method].set_index("relation")["change_ratio"].reindex(relations) * 100
            ax.barh(np.arange(len(relations)) - 0.4 + bar * (j + 0.5), values.fillna(0), height=bar, color=colours[method])
        if "n_facts_with_kn" in part:  # a relation where no set has a neuron: 0 % by definition, said so
            held = part.groupby("relation")["n_facts_with_kn"].sum().reindex(relations).fillna(0)
            for i in np.flatnonzero(held.to_numpy() == 0):
                ax.text(0.03, i, "no neurons found (0 %)", transform=ax.get_yaxis_transform(), va="center", fontsize=9,
                        color="0.35", zorder=5, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
        _percent_symlog(ax, linthresh)
        ax.set_title(OPERATION_TITLES.get(operation, operation))
        ax.set_xlabel("change of p(answer) (%)")
        ax.grid(axis="y", visible=False)
    ax0 = axes[0, 0]
    ax0.set_yticks(np.arange(len(relations)), relations)
    ax0.set_ylim(len(relations) - 0.5, -0.5)  # first relation on top
    ax0.set_ylabel("relation (PARAREL id)")
    handles = [Patch(color=colours[m], label=names.get(m, m)) for m in methods]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False)
    return fig


def change_by_scope(
    by_relation: pd.DataFrame,
    method: str = "ig",
    scopes: dict | None = None,
    linthresh: float = 10,
    width: float = 6.9,
) -> Figure:
    """Specificity of suppress / amplify: per operation, the distribution over relations of the change of
    p(answer) (%) on the fact's own prompts and on an unrelated fact's prompts (box plots, symmetric-log
    x axis linear within ±``linthresh`` %); one legend above the panel. ``scopes`` maps a scope to its
    legend name (and order)."""
    names = dict(scopes or {"own": "the fact's own prompts", "unrelated": "prompts of an unrelated fact"})
    data = by_relation[by_relation["method"] == method].assign(change=lambda f: 100 * f["change_ratio"])
    data = data.assign(scope=data["scope"].map(lambda s: names.get(s, s)),
                       operation=data["operation"].map(lambda o: OPERATION_TITLES.get(o, o).split(" (")[0]))
    fig, ax = plt.subplots(figsize=(width, 3.6), layout="constrained")
    order = [names[s] for s in names if names[s] in set(data["scope"])]
    operations = [t.split(" (")[0] for t in OPERATION_TITLES.values()]
    operations = [o for o in operations if o in set(data["operation"])] + sorted(set(data["operation"]) - set(operations))
    sns.boxplot(data, x="change", y="operation", order=operations, hue="scope", hue_order=order, palette=PALETTE,
                saturation=1, ax=ax)
    _percent_symlog(ax, linthresh)
    ax.set(xlabel="change of p(answer) per relation (%)", ylabel="")
    ax.get_legend().remove()
    handles = [Patch(color=c, label=n) for c, n in zip(sns.color_palette(PALETTE, len(order)), order)]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False)
    return fig


def erase_change_bars(
    changes: pd.DataFrame,
    sources: Sequence[str] | None = None,
    linthresh: float = 1,
    width: float = 6.9,
) -> Figure:
    """Table 5 as bars: one panel per source (left to right in ``sources`` order, default order of
    appearance), per erased relation the perplexity change (%) on its own prompts and on the other
    relations' prompts. Each panel has its own symmetric-log y axis (linear within ±``linthresh`` %), so
    a source whose changes are a hundred times smaller is not drawn flat; one legend above.

    ``changes`` has one row per (source, relation, prompts) with ``change`` in percent
    (``kn_lib.book.tables.erase_changes`` builds it)."""
    order = list(sources or dict.fromkeys(changes["source"]))
    scopes = list(dict.fromkeys(changes["prompts"]))
    colours = dict(zip(scopes, sns.color_palette(PALETTE, len(scopes))))
    fig, axes = plt.subplots(1, len(order), figsize=(width, 3.4), squeeze=False, layout="constrained")
    bar = 0.8 / max(len(scopes), 1)
    for ax, source in zip(axes[0], order):
        part = changes[changes["source"] == source]
        relations = list(dict.fromkeys(part["relation"]))
        for j, scope in enumerate(scopes):
            values = part[part["prompts"] == scope].set_index("relation")["change"].reindex(relations)
            ax.bar(np.arange(len(relations)) - 0.4 + bar * (j + 0.5), values.fillna(0), width=bar, color=colours[scope])
        _percent_symlog(ax, linthresh, axis="y", fmt="{:,.0f}")
        ax.set_xticks(np.arange(len(relations)), relations)
        ax.set(title=source, xlabel="erased relation")
        ax.grid(axis="x", visible=False)
    axes[0, 0].set_ylabel("perplexity change (%, log scale)")
    names = {"erased": "the erased relation's prompts", "other": "other relations' prompts"}
    handles = [Patch(color=colours[s], label=names.get(s, s)) for s in scopes]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False)
    return fig


def outcome_bars(counts: pd.DataFrame, by: str = "run", width: float = 6.9) -> Figure:
    """Stacked horizontal bars: per ``by`` (one bar each, with its total n in the tick label) the edits
    of each outcome (``kn_lib.book.tables.update_outcomes``: columns ``by``, ``outcome``, ``edits``),
    in the order the outcomes come; the legend sits above the panel, clear of the bars."""
    groups = list(dict.fromkeys(counts[by]))
    outcomes = list(dict.fromkeys(counts["outcome"]))
    wide = counts.pivot(index=by, columns="outcome", values="edits").reindex(index=groups, columns=outcomes)
    wide = wide.fillna(0)
    colours = dict(zip(outcomes, sns.color_palette(PALETTE, len(outcomes))))
    fig, ax = plt.subplots(figsize=(width, 0.55 * len(groups) + 1.3), layout="constrained")
    left = np.zeros(len(groups))
    for outcome in outcomes:
        ax.barh(np.arange(len(groups)), wide[outcome], left=left, height=0.6, color=colours[outcome])
        left += wide[outcome].to_numpy()
    ax.set_yticks(np.arange(len(groups)), [f"{g} (n = {int(t)})" for g, t in zip(groups, left)])
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set(xlabel="edits", ylabel="")
    ax.grid(axis="y", visible=False)
    handles = [Patch(color=colours[o], label=o) for o in outcomes]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False)
    return fig


def activation_by_type(
    by_relation: pd.DataFrame,
    neuron_sets: dict | None = None,
    types: Sequence[str] = ("T1", "T2", "T3"),
    linthresh: float = 1,
    width: float = 6.9,
) -> Figure:
    """Table 4 as distributions: one panel per neuron set (``neuron_sets`` maps a method to its title,
    in order; default ``NEURON_SETS``), a box per prompt type of the per-relation mean activation, each
    panel on its own symmetric-log y scale (linear within ±``linthresh``), so that neither a set with
    larger activations nor a far outlier squashes the boxes at zero.

    ``by_relation`` is the BingRel stage's table (relation, type, method, activation)."""
    import textwrap

    from matplotlib.ticker import FuncFormatter

    names = dict(neuron_sets or NEURON_SETS)
    methods = [m for m in names if m in set(by_relation["method"])]
    methods += sorted(set(by_relation["method"]) - set(methods))
    fig, axes = plt.subplots(1, len(methods), figsize=(width, 3.4), squeeze=False, layout="constrained")
    colours = sns.color_palette(PALETTE, len(methods))
    for ax, method, colour in zip(axes[0], methods, colours):
        part = by_relation[by_relation["method"] == method]
        sns.boxplot(part, x="type", y="activation", order=list(types), color=colour, saturation=1, ax=ax)
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}".replace("-", "−")))
        ax.axhline(0, color="black", linewidth=0.8)
        title = f"{names.get(method, method)} (n = {part['relation'].nunique()} relations)"
        ax.set_title(textwrap.fill(title, 34), fontsize=10)
        ax.set(xlabel="prompt type", ylabel="")
    axes[0, 0].set_ylabel("mean activation of the fact's neurons\nper relation (symlog scale)")
    return fig


def control_bars(effects: pd.DataFrame, width: float = 6.9) -> Figure:
    """Knowledge neurons beside their matched controls: one panel per (intervention, measure) row of
    ``effects`` (``kn_lib.book.controls.effects`` for one model), a bar per neuron set with its 95 %
    interval; the panel's title names n and its unit (facts or erased relations). One legend above."""
    panels = list(dict.fromkeys(zip(effects["intervention"], effects["measure"])))
    sets = [s for s in NEURON_SET_NAMES if s in set(effects["neuron_set"])]
    colours = dict(zip(sets, sns.color_palette(PALETTE, len(sets))))
    ncols = min(len(panels), 2)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 2.3 * nrows + 0.6), squeeze=False, layout="constrained")
    for ax, (intervention, measure) in zip(axes.flat, panels):
        part = effects[(effects["intervention"] == intervention) & (effects["measure"] == measure)].set_index("neuron_set")
        part = part.reindex([s for s in sets if s in part.index])
        x = np.arange(len(part))
        ax.bar(x, part["estimate"], color=[colours[s] for s in part.index])
        ax.errorbar(x, part["estimate"], yerr=[part["estimate"] - part["ci_low"], part["ci_high"] - part["estimate"]],
                    fmt="none", ecolor="black", capsize=3, linewidth=1)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks([])
        n = part["n"].max()
        ax.set_title(f"{intervention}: {measure}\n(n = {n:.0f} {part['n_unit'].iloc[0]})", fontsize=9)
        ax.set_ylabel(part["unit"].iloc[0])
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [Patch(color=colours[s], label=NEURON_SET_NAMES[s]) for s in sets]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False)
    return fig


def consistency_plot(by_fact: pd.DataFrame, width: float = 6.9) -> Figure:
    """Paraphrase consistency per model: the distribution over facts of the mean pairwise Jaccard overlap
    of their prompts' coarse sets, one box per relation (sorted by median), one panel per model
    (``kn_lib.experiments.paraphrase_consistency``'s ``by_fact`` with a ``model`` column)."""
    models = list(dict.fromkeys(by_fact["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(width, 5.2), squeeze=False, layout="constrained", sharex=True)
    for ax, model in zip(axes[0], models):
        part = by_fact[by_fact["model"] == model]
        order = part.groupby("relation")["mean_jaccard"].median().sort_values().index.tolist()
        sns.boxplot(part, x="mean_jaccard", y="relation", order=order, color=sns.color_palette(PALETTE)[0], saturation=1,
                    fliersize=2, ax=ax)
        ax.set(xlabel="", ylabel="", xlim=(0, 1), title=f"{model} ({len(part)} facts)")
        ax.tick_params(axis="y", labelsize=7)
    fig.supxlabel("mean pairwise Jaccard overlap of a fact's prompts' coarse sets", fontsize=10)
    return fig


def layer_edit_plot(layers: pd.DataFrame, models: Sequence[str] | None = None, width: float = 6.9) -> Figure:
    """Where editing works against where attribution points, one panel per model: success (%) of editing
    a fact's top-k neurons by integrated gradients at each layer, and of as many random neurons of that
    layer (lines, left axis), beside the mean share of the fact's attribution mass in the layer (bars,
    right axis). ``layers``: ``kn_lib.book.critiques.by_layer`` rows with a ``model`` column."""
    models = list(models or dict.fromkeys(layers["model"]))
    fig, axes = plt.subplots(len(models), 1, figsize=(width, 2.6 * len(models) + 0.5), squeeze=False, layout="constrained")
    colours = sns.color_palette(PALETTE, 3)
    for ax, model in zip(axes[:, 0], models):
        part = layers[layers["model"] == model]
        top = part[part["neuron_set"] == "top-ig"].sort_values("layer")
        share = ax.twinx()
        share.bar(top["layer"], 100 * top["mass_share"], color=colours[2], alpha=0.35, width=0.8)
        share.set_ylabel("attribution mass (%)", fontsize=8)
        for name, colour, label in (("top-ig", colours[0], "top-k neurons by IG"), ("random-layer", colours[1], "k random neurons")):
            sel = part[part["neuron_set"] == name].sort_values("layer")
            ax.plot(sel["layer"], sel["success"], marker="o", markersize=3, color=colour, label=label)
        ax.set_zorder(share.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set(ylabel="edit success (%)", title=f"{model} ({top['n'].max():.0f} facts)", xlabel="layer edited")
    handles = [Line2D([], [], color=colours[0], marker="o", label="top-k neurons by IG (success)"),
               Line2D([], [], color=colours[1], marker="o", label="k random neurons of the layer (success)"),
               Patch(color=colours[2], alpha=0.35, label="fact's attribution mass in the layer")]
    fig.legend(handles=handles, loc="outside upper center", ncol=2, frameon=False, fontsize=8)
    return fig


def held_out_scatter(per_relation: pd.DataFrame, width: float = 6.9) -> Figure:
    """Held-out against selection prompts: per relation, the change of p(answer) (%) when suppressing
    (left) or amplifying (right) its knowledge neurons, on the prompts they were chosen on (x) and on the
    others (y), one colour per model; on the diagonal, held-out prompts show the effect as strongly.
    ``per_relation``: ``kn_lib.book.held_out.by_relation`` rows of the knowledge neurons with a ``model``
    column."""
    models = list(dict.fromkeys(per_relation["model"]))
    colours = dict(zip(models, sns.color_palette(PALETTE, len(models))))
    fig, axes = plt.subplots(1, 2, figsize=(width, 3.4), layout="constrained")
    for ax, op in zip(axes, ("suppress", "amplify")):
        part = per_relation[per_relation["operation"] == op]
        wide = part.pivot_table(index=["model", "relation"], columns="half", values="change", aggfunc="first").reset_index()
        for model in models:
            rows = wide[wide["model"] == model]
            ax.scatter(rows["selection"], rows["held-out"], s=22, color=colours[model], alpha=0.8,
                       label=f"{model} ({len(rows)} relations)")
        ends = [wide[["selection", "held-out"]].min().min(), wide[["selection", "held-out"]].max().max()]
        pad = 0.05 * (ends[1] - ends[0] or 1)
        line = [ends[0] - pad, ends[1] + pad]
        ax.plot(line, line, color="grey", linewidth=0.8, linestyle="--")
        ax.set(xlim=line, ylim=line, aspect="equal", title=OPERATION_TITLES[op],
               xlabel="selection prompts: change (%)", ylabel="held-out prompts: change (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(models), frameon=False)
    return fig
