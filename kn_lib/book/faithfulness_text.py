"""The sentences the "Which neurons matter?" chapter, the claims page and the Performance chapter generate
from the faithfulness and null results: one template per case, each branch rendered by a test
(``tests/test_book_faithfulness.py``), so a sentence reads right whatever the numbers are."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .faithfulness import LABELS, fact_mean, per_fact
from .wording import plural  # noqa: F401 (re-exported: the chapters' sentences)


def _row(table: pd.DataFrame, method: str) -> Any:
    rows = table[table["method"] == method]
    return next(rows.itertuples()) if len(rows) else None


def _difference(estimate: float, low: float, high: float, direction: str) -> str:
    """How a verdict reads: which side is more faithful, and by how much (``direction`` from ``direction``)."""
    span = f"{estimate:+.2f} [{low:+.2f}, {high:+.2f}]"
    return {"more faithful": f"IG is more faithful ({span})", "less faithful": f"gradient × activation is more faithful ({span})",
            "too few relations": f"too few relations to tell ({span})", "no data": "there is no data to compare"}.get(
        direction, f"no difference is detected ({span})")


def headline(verdicts: pd.DataFrame, method_tables: dict[str, pd.DataFrame], k: int = 10) -> str:
    """The chapter's answer as a Markdown list, one item per model: recall@k of IG (m = 20) and of gradient
    × activation, their time ratio, and which one the paired interval favours."""
    if verdicts.empty or not method_tables:
        return "No faithfulness run is committed yet, so this page has no answer to give."
    return "\n".join(f"- {line}" for line in headline_lines(verdicts, method_tables, k))


def headline_lines(verdicts: pd.DataFrame, method_tables: dict[str, pd.DataFrame], k: int = 10) -> list[str]:
    """``headline``'s sentences, one per model."""
    sentences = []
    for model, table in method_tables.items():
        ig, gxa = _row(table, "ig-m20"), _row(table, "grad-x-act")
        mine = verdicts[(verdicts["model"] == model) & (verdicts["against"] == LABELS["grad-x-act"]) &
                        (verdicts["metric"] == f"recall@{k}")]
        if ig is None or gxa is None or mine.empty:
            sentences.append(f"**{model}**: the two methods were not both scored.")
            continue
        ratio = ig.seconds / gxa.seconds if gxa.seconds > 0 else float("nan")
        sentences.append(
            f"**{model}** ({plural(ig.n_facts, 'fact')} in {plural(ig.n_relations, 'relation')}): the paper's integrated gradients "
            f"(m = 20) names {ig.recall:.0%} of the {k} candidate neurons whose removal alone lowers the answer's probability most; "
            f"gradient × activation, one gradient instead of twenty per layer ({ratio:.0f}× less time), names {gxa.recall:.0%}: "
            f"{_difference(*mine.iloc[0][['estimate', 'low', 'high', 'IG is']])}.")
    return sentences


def cost_sentence(method_tables: dict[str, pd.DataFrame]) -> str:
    """Seconds per prompt of the scores against IG's, per model."""
    parts = []
    for model, table in method_tables.items():
        ig = _row(table, "ig-m20")
        if ig is None:
            continue
        others = [(LABELS[m], _row(table, m)) for m in ("ig-converged", "grad-x-act", "logprob-increase") if _row(table, m) is not None]
        timed = ", ".join(f"{name} {row.seconds / ig.seconds:.2g}×" for name, row in others)
        parts.append(f"on {model}, IG at m = 20 took {ig.seconds:.2g} s per prompt; relative to it, {timed}" if timed
                     else f"on {model}, IG at m = 20 took {ig.seconds:.2g} s per prompt")
    if not parts:
        return "No method was timed."
    return "Time per prompt, measured in the runs themselves: " + "; ".join(parts) + "."


def _number(x: float, digits: int = 2) -> str:
    """A rounded number that never reads "-0.00"."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def curve_sentence(method_tables: dict[str, pd.DataFrame], k: int = 10) -> str:
    """The drop of log p(answer) at k for IG, gradient x activation, the oracle and random neurons."""
    parts = []
    for model, table in method_tables.items():
        rows = [(f"{name}", _row(table, m)) for name, m in ((f"IG's top {k}", "ig-m20"), ("gradient × activation's", "grad-x-act"),
                                                          (f"the exact top {k}", "exact"), ("same-layer random neurons", "random"))]
        said = [f"{_number(row.drop)} ({name})" for name, row in rows if row is not None]
        if said:
            listed = said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]
            parts.append(f"by {listed} on {model}")
    if not parts:
        return "No faithfulness curve is committed."
    return f"With {k} neurons zeroed, log p(answer) falls " + "; ".join(parts) + " (means over facts)."


def nonsense_sentence(summaries: dict[str, dict]) -> str:
    """What the nonsense null says, per model: refined neurons on nonsense against real prompts."""
    if not summaries:
        return "The nonsense-prompt runs are not committed yet."
    parts = []
    for model, s in summaries.items():
        ratio = s["ratio"]
        if not np.isfinite(ratio.estimate):
            parts.append(f"on {model} the facts have no refined knowledge neuron on their own prompts, so there is nothing to compare")
            continue
        size = ("as many as" if ratio.low <= 1 <= ratio.high else "more than" if ratio.low > 1 else "fewer than")
        own = s["own"]
        own_text = (f"; of the neurons gibberish gets, {own.estimate:.0%} are the fact's own" if np.isfinite(own.estimate)
                    else "; none of the facts gets any on nonsense")
        some = s.get("any")
        some_text = f", {some.estimate:.0%} of the facts get at least one" if some is not None and np.isfinite(some.estimate) else ""
        parts.append(f"on {model} nonsense prompts get {ratio.estimate:.2f}× [{ratio.low:.2f}, {ratio.high:.2f}] the refined neurons "
                     f"of the real ones, {size} real prompts ({plural(s['n_facts'], 'fact')}){some_text}{own_text}")
    return "The pipeline's answer to gibberish: " + "; ".join(parts) + "."


def filtered_sentence(differences: dict[str, pd.DataFrame]) -> str:
    """Whether suppression without the common neurons still beats both controls, per model."""
    if not differences:
        return "The common-neuron runs are not committed yet."
    parts = []
    for model, frame in differences.items():
        rows = frame[frame["operation"] == "suppress"]
        if rows.empty:
            parts.append(f"on {model} no fact keeps a knowledge neuron once the common ones are removed")
            continue
        below = [r.control for r in rows.itertuples() if r.high < 0]
        spans = ", ".join(f"{r.difference:+.1f} [{r.low:+.1f}, {r.high:+.1f}] percentage points against {r.control}" for r in rows.itertuples())
        if len(below) == len(rows):
            verdict = "it still lowers p(answer) more than " + ("both controls" if len(rows) == 2 else "its control")
        elif below:
            verdict = f"it lowers p(answer) more than the {below[0]} control only"
        else:
            verdict = "it does not lower p(answer) more than " + ("either control" if len(rows) == 2 else "its control")
        parts.append(f"on {model} {verdict} ({spans})")
    return "Without the common neurons, suppression: " + "; ".join(parts) + "."


def degenerate_sentence(frames: dict[str, pd.DataFrame]) -> str:
    """The share of degenerate facts for the knowledge neurons beside their controls, per model."""
    if not frames:
        return "The degenerate-neuron runs are not committed yet."
    parts = []
    for model, frame in frames.items():
        mine = frame.set_index("neuron_set")
        if "knowledge" not in mine.index:
            parts.append(f"on {model} no fact has two knowledge neurons to split")
            continue
        kn = mine.loc["knowledge"]
        controls = ", ".join(f"{name} {mine.loc[name, 'degenerate']:.0%}" for name in mine.index if name != "knowledge")
        parts.append(f"on {model} {kn['degenerate']:.0%} [{kn['degenerate_low']:.0%}, {kn['degenerate_high']:.0%}] of "
                     f"{plural(int(kn['n_facts']), 'fact')} have degenerate knowledge neurons" + (f" (controls: {controls})" if controls else ""))
    return "By Chen et al.'s thresholds, " + "; ".join(parts) + "."


def summary_line(verdicts: pd.DataFrame) -> str:
    """Per model, how the verdict rows came out: "smollm2-135m: IG more faithful in 2 of 5 comparisons, less
    faithful in 1, no difference detected in 2"."""
    if verdicts.empty:
        return "no faithfulness run is committed yet"
    parts = []
    for model, rows in verdicts.groupby("model", sort=False):
        counts = rows["IG is"].value_counts()
        said = [f"{words} in {int(counts[key])}" for key, words in (("more faithful", "IG more faithful"), ("less faithful", "less faithful"),
                                                                     ("no difference detected", "no difference detected"),
                                                                     ("too few relations", "too few relations"), ("no data", "no data"))
                if counts.get(key, 0)]
        said[0] = said[0] + f" of {plural(len(rows), 'comparison')}"
        parts.append(f"{model}: " + ", ".join(said))
    return "; ".join(parts)


def cheap_sentence(verdicts: pd.DataFrame, cost: pd.DataFrame | None) -> str:
    """Said plainly, per model: is gradient x activation, at its measured cost, as faithful as IG (recall@10)?"""
    if verdicts.empty:
        return "No faithfulness run is committed, so the cost cannot be weighed against faithfulness."
    parts = []
    for model, rows in verdicts.groupby("model", sort=False):
        mine = rows[(rows["against"] == LABELS["grad-x-act"]) & rows["metric"].str.startswith("recall")]
        if mine.empty:
            continue
        row = mine.iloc[0]
        times = None
        if cost is not None:
            timed = cost[(cost["model"] == model) & (cost["method"] == "grad-x-act")]["seconds_vs_ig_m20"].dropna()
            times = 1 / float(timed.median()) if len(timed) else None
        cheaper = f"{times:.0f}× cheaper" if times else "cheaper"
        span = f"{row['estimate']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]"
        said = {"less faithful": f"gradient × activation, {cheaper}, finds the exact top-10 better than IG ({span} for IG)",
                "more faithful": f"IG finds the exact top-10 better than gradient × activation ({span}), which is {cheaper}",
                "no difference detected": f"no difference is detected between IG and gradient × activation ({span}), "
                                          f"and gradient × activation is {cheaper}"}.get(row["IG is"], f"the comparison has {row['IG is']}")
        parts.append(f"on {model}, {said}")
    return ("Plainly: " + "; ".join(parts) + ".") if parts else "Gradient × activation was not scored."


def refined_sentence(tables: dict[str, pd.DataFrame], n_boot: int = 1000, seed: int = 0) -> str:
    """What zeroing a fact's refined knowledge neurons together does to the benchmark's prompt, per model."""
    parts = []
    for model, found in tables.items():
        rows = found["curve"][found["curve"]["method"] == "refined"].assign(drop=lambda f: -f["delta_log_p"],
                                                                             flip=lambda f: f["flip"].astype(float))
        if rows.empty:
            parts.append(f"on {model} no benchmarked fact has refined knowledge neurons")
            continue
        drop, flips = fact_mean(per_fact(rows, "drop"), "drop", n_boot, seed), fact_mean(per_fact(rows, "flip"), "flip", n_boot, seed)
        parts.append(f"on {model} ({plural(rows['fact_id'].nunique(), 'fact')}, k = {rows['k'].min()} to {rows['k'].max()}, "
                     f"mean {rows['k'].mean():.1f}) it lowers log p(answer) by {drop.estimate:.2f} [{drop.low:.2f}, {drop.high:.2f}] "
                     f"and turns {flips.estimate:.0%} [{flips.low:.0%}, {flips.high:.0%}] of the correct answers wrong")
    return ("Zeroing a fact's refined knowledge neurons together: " + "; ".join(parts) + ".") if parts else ""


def cost_note(cost: pd.DataFrame | None) -> str:
    """Whether the cost benchmark ran on a quiet machine (its ``shared_machine`` column), per model."""
    if cost is None or cost.empty:
        return "The cost benchmark has not been run."
    shared = cost.groupby("model", sort=False)["shared_machine"].any()
    busy = [m for m, s in shared.items() if s]
    if not busy:
        return "Both runs had the machine to themselves."
    which = busy[0] if len(busy) == 1 else " and ".join(busy)
    return (f"The run{'s' if len(busy) > 1 else ''} of {which} shared the machine with another job (the file's `shared_machine` "
            "column): the ratios, measured side by side in one run, are what to compare, not the seconds.")
