"""Figures of the attribution chapters: a prompt's probabilities, attribution maps, layer histograms,
IG completeness and convergence, score scatters and refinement shares (``kn_lib.book.plots`` re-exports
them; conventions there)."""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from .plot_style import PALETTE, SEQUENTIAL, _axes, _layer_names, _numpy


def prompt_probabilities(
    prompts: pd.DataFrame,
    text: str = "text",
    p: str = "p_answer",
    correct: str = "correct",
    answer: str | None = None,
    predicted: str | None = "predicted",
    ax: Axes | None = None,
) -> Figure:
    """Horizontal bars: p(answer) for each prompt of a fact, coloured by whether the answer is top-1.

    ``prompts`` has one row per prompt (``pipeline.find_knowledge_neurons(...).prompts`` does); where the
    answer is not top-1 and a ``predicted`` column is there, the model's top-1 token is written next to
    the bar.
    """
    frame = prompts.assign(**{"top-1": prompts[correct].map({True: "answer is top-1", False: "answer not top-1"})})
    ax = _axes(ax, (8, 0.45 * len(frame) + 1.2))
    colours = sns.color_palette(PALETTE, 2)
    sns.barplot(
        frame, x=p, y=text, hue="top-1", dodge=False, ax=ax,
        palette={"answer is top-1": colours[0], "answer not top-1": colours[1]},
        hue_order=["answer is top-1", "answer not top-1"],
    )
    if predicted is not None and predicted in frame:
        for i, (value, ok, token) in enumerate(zip(frame[p], frame[correct], frame[predicted])):
            if not ok:
                ax.text(value + 0.01, i, f"top-1: {token.strip()!r}", va="center", fontsize=9)
    ax.set(xlim=(0, 1), xlabel=f"p({answer})" if answer else "p(answer)", ylabel="prompt (cut before [Y])")
    ax.legend(title=None, loc="lower right")
    return ax.figure


def attribution_heatmap(
    scores,
    k: int = 20,
    layers: Sequence[int] | None = None,
    threshold: float | None = 0.2,
    title: str | None = None,
) -> Figure:
    """Where one prompt's attribution lies: for each layer its k highest scores, and its total.

    Left: heatmap layer x rank of the k highest scores of each layer, divided by the prompt's maximum
    score (so the coarse-set rule "score > t x max" is a contour at ``threshold``, which is outlined).
    Right: the layer's sum of positive attribution.
    """
    s = _numpy(scores)
    names = _layer_names(s.shape[0], layers)
    k = min(k, s.shape[1])
    top = -np.sort(-s, axis=1)[:, :k]
    peak = s.max()
    rel = top / peak if peak > 0 else top
    fig, (ax, bar) = plt.subplots(
        1, 2, figsize=(10, 0.22 * len(names) + 1.8), sharey=True, gridspec_kw={"width_ratios": [3, 1]}
    )
    sns.heatmap(
        pd.DataFrame(rel, index=names, columns=range(1, k + 1)), ax=ax, cmap=SEQUENTIAL, vmin=0, vmax=1,
        cbar_kws={"label": "attribution / prompt's max", "location": "left", "pad": 0.12},
    )
    if threshold is not None and peak > 0:
        for r, c in zip(*np.nonzero(rel > threshold)):
            ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="white", lw=1.2))
    ax.set(xlabel="rank within layer", ylabel="layer")
    ax.tick_params(axis="y", rotation=0)
    positive = np.clip(s, 0, None).sum(1)
    bar.barh(np.arange(len(names)) + 0.5, positive, height=0.8, color=sns.color_palette(PALETTE)[0])
    bar.set(xlabel="sum of positive attribution")
    bar.tick_params(axis="y", left=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def layer_histogram(
    neurons: pd.DataFrame,
    n_layers: int,
    layer: str = "layer",
    hue: str | None = None,
    stat: str = "count",
    ax: Axes | None = None,
) -> Figure:
    """How many neurons of a tidy table (one row per neuron, e.g. coarse or refined sets) fall in each
    layer; one bar per layer 0..n_layers-1, empty layers included."""
    ax = _axes(ax, (9, 3.2))
    sns.histplot(
        neurons, x=layer, hue=hue, bins=np.arange(n_layers + 1) - 0.5, stat=stat, multiple="dodge" if hue else "layer",
        shrink=0.85, palette=PALETTE if hue else None, ax=ax,
    )
    ax.set(xlim=(-0.5, n_layers - 0.5), xlabel="layer", ylabel="neurons" if stat == "count" else stat)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    return ax.figure


def completeness_plot(
    frame: pd.DataFrame,
    x: str = "delta_p",
    y: str = "attribution_sum",
    label: str | None = "layer",
    n_labels: int = 5,
    hue: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Integrated gradients' completeness, one point per layer: the layer's summed attribution against
    p(full) - p(layer zeroed), with the identity line on which exact integrals would lie. The
    ``n_labels`` points farthest from zero are labelled with ``label``."""
    ax = _axes(ax, (5.2, 5))
    sns.scatterplot(frame, x=x, y=y, hue=hue, palette=PALETTE if hue else None, ax=ax, s=45, zorder=3)
    lo = min(frame[x].min(), frame[y].min())
    hi = max(frame[x].max(), frame[y].max())
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", ls="--", lw=1, label="identity", zorder=2)
    if label is not None:
        far = frame.assign(_r=frame[x].abs() + frame[y].abs()).nlargest(n_labels, "_r").sort_values(y)
        span = (hi - lo) or 1.0
        previous = None
        for _, row in far.iterrows():
            name = row[label]
            name = int(name) if isinstance(name, float) and float(name).is_integer() else name
            # labels of nearly coincident points go on alternate sides instead of on top of each other
            crowded = previous is not None and abs(row[y] - previous) < 0.04 * span
            offset = (-12, 6) if crowded else (6, -10)
            ax.annotate(f"{label} {name}", (row[x], row[y]), textcoords="offset points", xytext=offset, fontsize=9,
                        ha="right" if crowded else "left")
            previous = None if crowded else row[y]
    ax.set(xlabel="p(full) − p(layer zeroed)", ylabel="sum of the layer's attributions")
    ax.legend(loc="upper left")
    ax.set_aspect("equal", adjustable="datalim")
    return ax.figure


def convergence_plot(
    frame: pd.DataFrame,
    x: str = "steps",
    y: str = "gap",
    hue: str = "rule",
    col: str = "layer",
    absolute: bool = True,
) -> Figure:
    """Completeness gap against the number of Riemann steps m, one panel per ``col`` (e.g. layer) and
    one line per ``hue`` (e.g. quadrature rule). With ``absolute`` the |gap| is drawn on log-log axes,
    where an O(1/m) error is a line of slope -1."""
    data = frame.assign(**{y: frame[y].abs()}) if absolute else frame
    grid = sns.relplot(
        data, x=x, y=y, hue=hue, col=col, kind="line", marker="o", palette=PALETTE, height=3, aspect=1.0,
        facet_kws={"sharey": False},
    )
    for ax in grid.axes.flat:
        if absolute:
            ax.set(xscale="log", yscale="log")
        else:
            ax.axhline(0, color="0.4", lw=1)
        ticks = sorted(frame[x].unique())
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter([str(v) for v in ticks]))
        ax.xaxis.set_minor_locator(NullLocator())
    grid.set_axis_labels("steps m", "|attribution sum − Δp|" if absolute else "attribution sum − Δp")
    grid.set_titles(f"{col} {{col_name}}")
    return grid.figure


def score_scatter(
    x_scores,
    y_scores,
    k: int = 20,
    labels: tuple[str, str] = ("activation", "integrated gradients"),
    ax: Axes | None = None,
) -> Figure:
    """Two scorings of the same neurons, one point per neuron; each scoring's top k highlighted.

    Shows how far ranking by one (e.g. the activation baseline) is from ranking by the other (IG)."""
    a, b = _numpy(x_scores).ravel(), _numpy(y_scores).ravel()
    if a.shape != b.shape:
        raise ValueError(f"scores of different shapes: {a.shape} vs {b.shape}")
    top_a, top_b = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
    kind = np.array(
        ["top in both" if i in top_a and i in top_b else f"top {k} by {labels[0]}" if i in top_a
         else f"top {k} by {labels[1]}" if i in top_b else "other" for i in range(len(a))]
    )
    frame = pd.DataFrame({labels[0]: a, labels[1]: b, "neuron": kind})
    ax = _axes(ax, (6, 4.5))
    colours = sns.color_palette(PALETTE, 4)
    palette = {"other": "0.75", f"top {k} by {labels[0]}": colours[1], f"top {k} by {labels[1]}": colours[0],
               "top in both": colours[2]}
    order = ["other", f"top {k} by {labels[0]}", f"top {k} by {labels[1]}", "top in both"]
    for name in order:
        part = frame[frame["neuron"] == name]
        if len(part):
            ax.scatter(part[labels[0]], part[labels[1]], s=6 if name == "other" else 28, color=palette[name],
                       label=f"{name} ({len(part)})", alpha=0.5 if name == "other" else 1.0, linewidths=0)
    ax.set(xlabel=labels[0], ylabel=labels[1])
    ax.legend(loc="best", fontsize=9, markerscale=1.5)
    return ax.figure


def share_plot(
    shares: pd.DataFrame,
    p: float,
    top: int = 25,
    share: str = "share",
    fact: str = "fact_id",
    titles: dict | None = None,
) -> Figure:
    """Refinement: for each fact, the neurons of its coarse sets ranked by the share of prompts whose
    coarse set holds them, with the threshold p (kept: share > p). ``shares`` has one row per
    (fact, layer, neuron); ``titles`` maps a fact to the name shown above its panel, and its order is
    the order of the panels (default: order of appearance)."""
    present = list(dict.fromkeys(shares[fact]))
    facts = [f for f in (titles or {}) if f in present] + [f for f in present if f not in (titles or {})]
    fig, axes = plt.subplots(len(facts), 1, figsize=(10, 2.8 * len(facts)), squeeze=False)
    colours = sns.color_palette(PALETTE, 2)
    for ax, name in zip(axes[:, 0], facts):
        part = shares[shares[fact] == name].sort_values([share, "layer", "neuron"], ascending=[False, True, True]).head(top)
        names = [f"L{l}.{n}" for l, n in zip(part["layer"], part["neuron"])]
        kept = part[share].to_numpy() > p + 1e-9
        ax.bar(range(len(part)), part[share], color=[colours[0] if k else colours[1] for k in kept])
        ax.axhline(p, color="0.3", ls="--", lw=1)
        ax.text(len(part) - 0.5, p + 0.02, f"p = {p:.2f}", ha="right", va="bottom", fontsize=9)
        ax.set_xticks(range(len(part)))
        ax.set_xticklabels(names, rotation=90, fontsize=8)
        ax.set(ylim=(0, 1.05), ylabel="share of prompts", title=f"{(titles or {}).get(name, name)}: {int(kept.sum())} kept (share > p)")
        ax.set_xlabel("neuron (layer.index)")
    handles = [Patch(color=colours[0], label="kept: knowledge neuron"), Patch(color=colours[1], label="dropped")]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=9, frameon=False)
    return fig
