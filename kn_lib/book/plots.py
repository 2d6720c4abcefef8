"""Figures of the book: tidy tables (or score tensors) in, matplotlib figures out.

The plotting layer only: every function draws what it is given and computes nothing beyond what a
figure needs (sorting, a top-k selection, a rescaling to the prompt's maximum). Conventions:

* input is a tidy ``pandas.DataFrame`` (one row per observation, as ``kn_lib.pipeline`` returns) or a
  score tensor ``[n_layers, n_neurons]`` as ``kn_lib.attribution`` returns;
* output is the ``matplotlib.figure.Figure``; single-panel functions also take ``ax=`` to draw into an
  existing axes (and then return that axes' figure);
* colours come from seaborn's colour-blind-safe ``colorblind`` palette, heatmaps use ``cividis``
  (designed to read the same with colour-vision deficiencies), signed maps ``vlag``;
* every axis is labelled, with units where there are any.

Call ``use_style()`` once per notebook for the book's look.
"""

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
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

PALETTE = "colorblind"
SEQUENTIAL = "cividis"
DIVERGING = "vlag"


# font sizes in points at the figures' native size: a page shows a 10-inch figure at about 70 %,
# where smaller text is hard to read
FONT_SIZES = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
              "ytick.labelsize": 10, "legend.fontsize": 10, "legend.title_fontsize": 10, "figure.titlesize": 13}


def use_style() -> None:
    """The book's look: white grid, colour-blind-safe palette, readable font sizes, and figures
    saved with a tight bounding box (no clipped titles or labels)."""
    sns.set_theme(style="whitegrid", palette=PALETTE, context="notebook", rc={**FONT_SIZES, "savefig.bbox": "tight"})


# raw field names of kn_lib's tables -> column headers a reader understands. A name missing here is
# shown with spaces for underscores; a chapter can override a label for one table (``readable(frame,
# labels)``) where the same field means something narrower there.
COLUMN_LABELS = {
    "relation": "relation", "label": "label", "type": "type", "templates": "templates",
    "causal_templates": "templates, [X] before [Y]", "facts": "facts", "prompts": "prompts",
    "fact_id": "fact", "template_id": "template", "text": "prompt", "p_answer": "p(answer)",
    "predicted": "model's top-1", "correct": "answer is top-1", "layer": "layer", "neuron": "neuron",
    "share": "share of prompts", "p": "share threshold p", "mean_count": "mean neurons per fact",
    "converged": "in band", "reason": "search ended", "n_facts": "facts", "method": "method",
    "n_kn": "knowledge neurons", "mean_kn_per_fact": "knowledge neurons per fact (mean)",
    "single_token": "single-token answers", "coverage": "coverage", "model": "model",
    "attribution": "attribution", "activation": "activation", "score": "score",
    # sample sizes shared by several experiments
    "n_relations": "relations", "n_prompts": "prompts", "n_edits": "edits", "n_neurons": "number of neurons",
    "top_k": "neurons erased per relation (top k)", "neuron_set": "neuron set",
    # statistics (Table 2, kn_lib.experiments.neuron_statistics)
    "mean_intra_intersection": "shared KNs, same-relation fact pairs (mean)",
    "mean_inter_intersection": "shared KNs, different-relation fact pairs (mean)",
    "n_intra_pairs": "same-relation fact pairs", "n_inter_pairs": "different-relation fact pairs",
    "pairs_sampled": "pairs drawn at random (not all pairs)",
    "n_kn_live": "knowledge neurons (recomputed now)", "n_kn_stored": "knowledge neurons (stored)",
    # suppress / amplify (Figures 4-5, kn_lib.experiments.suppress_amplify): means over relations, in %
    "n_facts_with_kn": "facts with knowledge neurons", "n_relations_with_kn": "relations with knowledge neurons",
    "suppress_own": "p(answer) change when suppressed, % (own prompts)",
    "amplify_own": "p(answer) change when amplified, % (own prompts)",
    "suppress_unrelated": "p(answer) change when suppressed, % (unrelated fact's prompts)",
    "amplify_unrelated": "p(answer) change when amplified, % (unrelated fact's prompts)",
    "suppress_own_kn_only": "p(answer) change when suppressed, % (own prompts; facts with KNs only)",
    "amplify_own_kn_only": "p(answer) change when amplified, % (own prompts; facts with KNs only)",
    "suppress_unrelated_kn_only": "p(answer) change when suppressed, % (unrelated fact's prompts; facts with KNs only)",
    "suppress_own_flip": "correct answers lost when suppressed, % of those correct (own prompts)",
    "amplify_own_flip": "wrong answers made correct when amplified, % of those wrong (own prompts)",
    "amplify_unrelated_kn_only": "p(answer) change when amplified, % (unrelated fact's prompts; facts with KNs only)",
    "change_ratio": "relative change of mean p(answer) (fraction)",
    "mean_p_before": "mean p(answer) before", "mean_p_after": "mean p(answer) after",
    # BingRel (Table 4, kn_lib.experiments.bingrel_activation)
    "t1": "mean activation, T1 (fact expressed)", "t2": "mean activation, T2 (head only)",
    "t3": "mean activation, T3 (random sentence)",
    "n_sentences_T1": "T1 sentences read (summed over facts)", "n_sentences_T2": "T2 sentences read (summed over facts)",
    "n_sentences_T3": "T3 sentences read (summed over facts)",
    # updating facts (Table 6, kn_lib.experiments.update_facts)
    "change_rate": "change rate: old answer no longer top-1 (% of edits)",
    "success_rate": "success rate: new answer is top-1 (% of edits)",
    "delta_intra_ppl": "ΔPPL, other facts of the relation (paper's formula)",
    "delta_inter_ppl": "ΔPPL, facts of other relations (paper's formula)",
    "delta_intra_ppl_logspace": "ΔPPL, other facts of the relation (same, from log-probabilities)",
    "delta_inter_ppl_logspace": "ΔPPL, facts of other relations (same, from log-probabilities)",
    "delta_intra_ppl_median": "ΔPPL, other facts of the relation (median edit)",
    "delta_inter_ppl_median": "ΔPPL, facts of other relations (median edit)",
    "paraphrase_change_rate": "paraphrases: old answer no longer top-1 (% of prompts)",
    "paraphrase_success_rate": "paraphrases: new answer is top-1 (% of prompts)",
    "intra_changed_rate": "other facts of the relation: top-1 changed (% of prompts)",
    "intra_new_rate": "other facts of the relation: new answer is top-1 (% of prompts)",
    "old_object_live": "old answer", "new_object_live": "new answer (edit target)",
    "top1_after_live": "top-1 after the edit (rerun now)", "top1_after_stored": "top-1 after the edit (stored)",
    "success_live": "new answer is top-1 (rerun now)",
    # erasing relations (Table 5, kn_lib.experiments.erase_relations.table5)
    "erased_n_prompts": "erased relation: prompts", "other_n_prompts": "other relations: prompts",
    "erased_ppl_before": "erased relation: perplexity before", "erased_ppl_after": "erased relation: perplexity after",
    "erased_ppl_change": "erased relation: perplexity change (%)",
    "other_ppl_before": "other relations: perplexity before", "other_ppl_after": "other relations: perplexity after",
    "other_ppl_change": "other relations: perplexity change (%)",
    "erased_accuracy_before": "erased relation: top-1 accuracy before (fraction)",
    "erased_accuracy_after": "erased relation: top-1 accuracy after (fraction)",
    "other_accuracy_before": "other relations: top-1 accuracy before (fraction)",
    "other_accuracy_after": "other relations: top-1 accuracy after (fraction)",
    "erased_flip_rate": "erased relation: correct answers lost (%)",
    "other_flip_rate": "other relations: correct answers lost (%)",
    "max_facts": "facts per erased neuron (max)", "mean_facts": "facts per erased neuron (mean)",
    # the critiques (kn_lib.book.critiques): per-layer edits, grammar groups, symmetric edits
    "r2_layer": "R² of the outcome on the edited layer (fixed effects)",
    "r2_layer_localization": "R² with the attribution share added",
    "r2_increment": "R² added by the attribution share",
    "n_rows": "(fact, layer) edits",
    "accuracy_before": "minimal pairs judged correctly before (%)",
    "accuracy_after": "minimal pairs judged correctly after (%)",
    "p_change": "relative change of p(target) (%)", "flip_rate": "correct pairs flipped (%)",
    "n_pairs": "held-out pairs", "reverse_before": "reverse holds before (%)",
    "reverse_after": "reverse holds after (%)", "old_reverse_after": "old reverse still holds after (%)",
    # claims (kn_lib.book.claims): bootstrap intervals
    "ci_low": "95% CI low", "ci_high": "95% CI high", "n_clusters": "n (clusters)", "p_value": "p (bootstrap)", "mc_error": "Monte Carlo error",
    # performance (benchmarks/attribution_speed.py, aggregated per path in the performance chapter)
    "seconds_per_prompt": "wall time per prompt (s)", "seconds_9_prompts": "wall time per 9 prompts (s)",
    "cpu_seconds_per_prompt": "CPU time per prompt (s, all threads)",
    "speedup_vs_reference": "speed-up vs reference, wall time (×)",
    "cpu_speedup_vs_reference": "speed-up vs reference, CPU time (×)",
    "gflop_per_prompt": "GFLOP per prompt", "peak_rss_mb": "peak memory, RSS (MB)",
    "load_1min": "load average before the run (1 min)",
    "rel_diff": "max difference from the reference's scores (relative to its largest)",
}


def readable(frame: pd.DataFrame | pd.Series, labels: dict | None = None) -> pd.DataFrame | pd.Series:
    """``frame`` with headers for readers: ``COLUMN_LABELS`` (plus ``labels``, which win), else the raw
    name with spaces for underscores. Column headers and the names of the index and column axes change
    (a Series: its index labels, which are field names); the values do not, so use it on a table about
    to be shown, never on one that code reads on."""
    names = {**COLUMN_LABELS, **(labels or {})}

    def label(name):
        return names.get(name, name.replace("_", " ")) if isinstance(name, str) else name

    if isinstance(frame, pd.Series):
        return frame.rename(index=label).rename_axis(index=label)
    return frame.rename(columns=lambda c: label(str(c))).rename_axis(index=label, columns=label)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _numpy(scores) -> np.ndarray:
    """A score tensor (torch or numpy) as a float64 numpy array, without autograd."""
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu().double().numpy()
    return np.asarray(scores, dtype=np.float64)


def _layer_names(n: int, layers: Sequence[int] | None) -> list[int]:
    names = list(range(n)) if layers is None else list(layers)
    if len(names) != n:
        raise ValueError(f"{len(names)} layer names for {n} rows of scores")
    return names


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


def verdict_colours() -> dict[str, tuple]:
    """One colour per verdict of ``kn_lib.book.claims`` (colour-blind palette): "holds" green, a
    confirmed direction of another size blue (larger) or orange (smaller), of a size the interval cannot
    tell light blue, "within ceiling" yellow, "reversed" and "exceeded" vermillion and pink (warnings),
    undecided verdicts in greys and brown."""
    c = sns.color_palette(PALETTE, 10)
    return {"holds": c[2], "confirmed, larger": c[0], "confirmed, smaller": c[1], "confirmed, size undetermined": c[9],
            "not detected": c[7], "reversed": c[3], "borderline": c[6], "within ceiling": c[8], "exceeded": c[4],
            "inconclusive": c[5], "no data": (0.8, 0.8, 0.8)}


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


# neuron sets of the manipulation figures, in legend order
NEURON_SETS = {"ig": "knowledge neurons (integrated gradients)", "activation": "baseline neurons (activation)"}
OPERATION_TITLES = {"suppress": "suppressed (activation × 0)", "amplify": "amplified (activation × 2)"}


def _relation_order(relations) -> list[str]:
    """PARAREL ids in numeric order (P19 before P101); other names after them, alphabetically."""
    def key(r):
        r = str(r)
        return (0, int(r[1:]), r) if r[:1] == "P" and r[1:].isdigit() else (1, 0, r)
    return sorted(set(relations), key=key)


def _percent_symlog(ax: Axes, linthresh: float, axis: str = "x", fmt: str = "{:.0f}") -> None:
    """A symmetric-log ``axis`` (linear within ±linthresh) with ticks written as plain signed percents;
    the default short labels ("1000", not "+1,000") suit a narrow panel, where decades lie close."""
    from matplotlib.ticker import FuncFormatter

    getattr(ax, f"set_{axis}scale")("symlog", linthresh=linthresh)
    getattr(ax, f"{axis}axis").set_major_formatter(FuncFormatter(lambda v, _: fmt.format(v).replace("-", "−")))
    (ax.axvline if axis == "x" else ax.axhline)(0, color="black", linewidth=0.8)


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


NEURON_SET_NAMES = {"knowledge": "knowledge neurons", "random-layer": "random, same layers",
                    "activation-matched": "activation-matched, same layers"}


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
