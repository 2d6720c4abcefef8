"""Figures of the "Which neurons matter?" chapter: cost against faithfulness, and the faithfulness curves.
One colour per method in both, the same in every panel."""

from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

from .faithfulness import LABELS
from .plots import PALETTE

ORDER = ("ig-m20", "ig-left-m20", "ig-converged", "grad-x-act", "logprob-increase", "activation", "exact", "random")
MARKERS = dict(zip(ORDER, "osDv^Xp."))


def method_colours() -> dict[str, tuple]:
    """One colour per method; the oracle black and random grey, as in a legend a reader expects."""
    colours = dict(zip(ORDER[:6], sns.color_palette(PALETTE, 6)))
    return {**colours, "exact": (0.1, 0.1, 0.1), "random": (0.6, 0.6, 0.6)}


def cost_vs_faithfulness(tables: Mapping[str, pd.DataFrame], k: int = 10, width: float = 6.9) -> Figure:
    """One panel per model: seconds per prompt (log) against recall@k of the exact top-k, one point per
    scored method, 95% intervals both ways (relations resampled)."""
    colours = method_colours()
    fig, axes = plt.subplots(1, len(tables), figsize=(width, 3.2), sharey=True, squeeze=False)
    for ax, (model, table) in zip(axes[0], tables.items()):
        scored = table[table["method"].isin(ORDER[:6])]
        for row in scored.itertuples():
            ax.errorbar(row.seconds, row.recall, xerr=[[row.seconds - row.seconds_low], [row.seconds_high - row.seconds]],
                        yerr=[[row.recall - row.recall_low], [row.recall_high - row.recall]], fmt=MARKERS[row.method],
                        color=colours[row.method], ms=7, capsize=2, label=LABELS[row.method])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("seconds per prompt (log scale)")
        ax.set_title(model, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
    axes[0][0].set_ylabel(f"recall@{k} of the exact top-{k}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    return fig


def faithfulness_curves(curves: Mapping[str, pd.DataFrame], width: float = 6.9) -> Figure:
    """One panel per model: the mean drop of log p(answer) when a method's top-k neurons are zeroed,
    against k (log scale), mean over facts (each fact's prompts averaged first)."""
    colours = method_colours()
    fig, axes = plt.subplots(1, len(curves), figsize=(width, 3.2), sharey=False, squeeze=False)
    for ax, (model, curve) in zip(axes[0], curves.items()):
        ranked = curve[curve["method"].isin(ORDER)]
        per_fact = ranked.groupby(["fact_id", "method", "k"], as_index=False)["delta_log_p"].mean()
        means = per_fact.groupby(["method", "k"], as_index=False)["delta_log_p"].mean()
        for method in ORDER:
            line = means[means["method"] == method].sort_values("k")
            if line.empty:
                continue
            ax.plot(line["k"], -line["delta_log_p"], marker=MARKERS[method], color=colours[method], label=LABELS[method],
                    lw=1.6 if method != "exact" else 2.2, ls="--" if method in ("exact", "random") else "-")
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ks = sorted(ranked["k"].unique())  # the benchmark's k (the refined sets' own k are not on this curve)
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("k: neurons zeroed (log scale)")
        ax.set_title(model, fontsize=10)
    axes[0][0].set_ylabel("drop of log p(answer)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    return fig


def recurrence_plot(recurrence: Mapping[str, pd.DataFrame], max_share: float = 0.05, width: float = 6.9) -> Figure:
    """Per model: the share of facts each refined knowledge neuron belongs to, neurons ranked most shared
    first (log scale); the common-neuron threshold (more than ``max_share`` of the facts) dashed."""
    fig, axes = plt.subplots(1, len(recurrence), figsize=(width, 2.9), squeeze=False)
    colour = method_colours()["ig-m20"]
    for ax, (model, table) in zip(axes[0], recurrence.items()):
        shares = np.sort(table["share_facts"].to_numpy())[::-1]
        ax.step(np.arange(1, len(shares) + 1), 100 * shares, where="post", color=colour, lw=1.8)
        ax.axhline(100 * max_share, color="black", lw=1, ls="--")
        ax.text(len(shares), 100 * max_share, f" {max_share:.0%}", va="bottom", ha="right", fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_title(model, fontsize=10)
        ax.set_ylim(0, None)
    axes[0][0].set_ylabel("% of facts it belongs to")
    fig.supxlabel("knowledge neurons ranked by how many facts share them (log scale)", fontsize=10)
    fig.tight_layout()
    return fig
