"""How a chapter shows a table: readable headers and cells that look finished.

``readable`` renames a table's raw field names to headers a reader understands (``COLUMN_LABELS``).
``shown`` is the one formatter every table a page shows goes through: numbers in 3 significant figures
without scientific notation (``number_text``), "—" for a missing value (never NaN or None), ✓ / ✗ for
booleans, no index column, and at most ``MAX_COLUMNS`` columns, so that no table scrolls sideways.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_COLUMNS = 7  # a table wider than this does not fit the text column: split it or drop columns

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


def number_text(value: float) -> str:
    """A number for a table cell: 3 significant figures, never scientific notation ("0.000061",
    "125,732"), "—" when missing."""
    if pd.isna(value):
        return "—"
    if value == 0 or abs(value) >= 1e-3 and abs(value) < 1e4:
        text = f"{value:.3g}"
        return f"{value:,.0f}" if "e" in text else text
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    digits = -int(np.floor(np.log10(abs(value)))) + 2  # 3 significant figures after the leading zeros
    return f"{value:.{digits}f}"


def cell_text(value: object) -> str:
    """One table cell as a reader sees it: "—" when missing, ✓ / ✗ for a boolean, an integer with
    thousands separators, any other number by ``number_text``, anything else as its text."""
    if np.ndim(value) == 0 and pd.isna(value):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "✓" if value else "✗"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return number_text(float(value))
    return str(value)


def shown(frame: pd.DataFrame | pd.Series, labels: dict | None = None, max_columns: int = MAX_COLUMNS):
    """The table a page shows (a ``Styler``): ``readable`` headers, every cell by ``cell_text``, no index
    column (a meaningful index becomes the first column). Raises ``ValueError`` beyond ``max_columns``
    columns, so that a page cannot ship a table wider than its text column."""
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    if len(frame.columns) > max_columns:
        raise ValueError(f"a table shows at most {max_columns} columns, got {len(frame.columns)}: {list(frame.columns)}")
    return readable(frame, labels).style.hide(axis="index").format(cell_text)
