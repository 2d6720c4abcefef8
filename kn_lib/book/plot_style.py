"""The book's look, shared by every figure module: palette, font sizes and small axis helpers.

Colours come from seaborn's colour-blind-safe ``colorblind`` palette, heatmaps use ``cividis`` (designed
to read the same with colour-vision deficiencies), signed maps ``vlag``; ``NEURON_SET_NAMES`` names the
neuron sets (knowledge neurons, each control, the baseline) the same way in every figure.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes

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


def verdict_colours() -> dict[str, tuple]:
    """One colour per verdict of ``kn_lib.book.claims`` (colour-blind palette): "holds" green, a
    confirmed direction of another size blue (larger) or orange (smaller), of a size the interval cannot
    tell light blue, "within ceiling" yellow, "reversed" and "exceeded" vermillion and pink (warnings),
    undecided verdicts in greys and brown."""
    c = sns.color_palette(PALETTE, 10)
    return {"holds": c[2], "confirmed, larger": c[0], "confirmed, smaller": c[1], "confirmed, size undetermined": c[9],
            "not detected": c[7], "reversed": c[3], "borderline": c[6], "within ceiling": c[8], "exceeded": c[4],
            "inconclusive": c[5], "no data": (0.8, 0.8, 0.8)}


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


NEURON_SET_NAMES = {"knowledge": "knowledge neurons", "random-layer": "random, same layers",
                    "activation-matched": "activation-matched, same layers"}
