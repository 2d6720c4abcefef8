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

This module gathers the figure modules by what they draw (``attribution_plots``, ``experiment_plots``),
their shared look (``plot_style``) and the table formatter (``table_style``), so that a chapter needs one
import; the faithfulness chapter's figures live in ``faithfulness_plots``.
"""

from .attribution_plots import (
    attribution_heatmap, completeness_plot, convergence_plot, layer_histogram, prompt_probabilities, score_scatter, share_plot,
)
from .experiment_plots import (
    WIDE_SPAN, activation_by_type, change_by_relation, change_by_scope, claims_forest, consistency_plot, control_bars,
    erase_change_bars, held_out_scatter, layer_edit_plot, outcome_bars,
)
from .plot_style import (
    DIVERGING, FONT_SIZES, NEURON_SET_NAMES, NEURON_SETS, OPERATION_TITLES, PALETTE, SEQUENTIAL, use_style, verdict_colours,
)
from .table_style import COLUMN_LABELS, readable, shown

__all__ = [
    "attribution_heatmap", "completeness_plot", "convergence_plot", "layer_histogram", "prompt_probabilities", "score_scatter",
    "share_plot", "WIDE_SPAN", "activation_by_type", "change_by_relation", "change_by_scope", "claims_forest",
    "consistency_plot", "control_bars", "erase_change_bars", "held_out_scatter", "layer_edit_plot", "outcome_bars",
    "DIVERGING", "FONT_SIZES", "NEURON_SET_NAMES", "NEURON_SETS", "OPERATION_TITLES", "PALETTE", "SEQUENTIAL",
    "use_style", "verdict_colours", "COLUMN_LABELS", "readable", "shown",
]
