"""Smoke tests of kn_lib.book.plots on synthetic data: each function draws, labels its axes, returns a Figure;
and the book's tables get readable headers (``readable``, ``COLUMN_LABELS``)."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from kn_lib.book import plots  # noqa: E402
from kn_lib.book.claims import Interval, claim_row  # noqa: E402
from kn_lib.experiments.bingrel_activation import TYPES, BingRelSummary  # noqa: E402
from kn_lib.experiments.erase_relations import EraseSummary, table5  # noqa: E402
from kn_lib.experiments.neuron_statistics import StatisticsSummary  # noqa: E402
from kn_lib.experiments.suppress_amplify import ManipulationSummary  # noqa: E402
from kn_lib.experiments.suppress_amplify import _by_relation as manipulation_by_relation  # noqa: E402
from kn_lib.experiments.update_summary import UpdateSummary  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    plots.use_style()
    yield
    plt.close("all")


@pytest.fixture
def scores() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 50, generator=g) * 0.01
    s[4, 7] = 1.0
    s[3, 2] = 0.5
    return s


def _labelled(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    drawn = [ax for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel()]
    assert drawn, "no labelled axes"


def test_prompt_probabilities():
    prompts = pd.DataFrame({"text": ["a is", "b was", "c,"], "p_answer": [0.7, 0.2, 0.01], "correct": [True, False, False]})
    fig = plots.prompt_probabilities(prompts, answer="Paris")
    _labelled(fig)
    assert fig.axes[0].get_xlabel() == "p(Paris)"


def test_attribution_heatmap(scores):
    fig = plots.attribution_heatmap(scores, k=10, layers=[10, 11, 12, 13, 14, 15], title="t")
    _labelled(fig)
    # heatmap ticks are the given layer names
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][0] == "10"


def test_attribution_heatmap_nonpositive():
    _labelled(plots.attribution_heatmap(-torch.rand(3, 5), k=3))


def test_layer_histogram():
    neurons = pd.DataFrame({"layer": [0, 0, 3, 5, 5, 5], "neuron": range(6), "fact_id": list("aabbbb")})
    _labelled(plots.layer_histogram(neurons, n_layers=8))
    _labelled(plots.layer_histogram(neurons, n_layers=8, hue="fact_id"))


def test_completeness_plot():
    frame = pd.DataFrame({"layer": range(5), "delta_p": [0.1, -0.05, 0.3, 0.0, 0.02]})
    frame["attribution_sum"] = frame["delta_p"] * 1.1
    fig = plots.completeness_plot(frame)
    _labelled(fig)
    assert any(line.get_label() == "identity" for line in fig.axes[0].lines)


@pytest.mark.parametrize("absolute", [True, False])
def test_convergence_plot(absolute):
    rows = [
        {"steps": m, "rule": rule, "layer": layer, "gap": (1 if rule == "right" else -1) * 0.1 / m}
        for m in (5, 10, 20) for rule in ("right", "left") for layer in (3, 7)
    ]
    fig = plots.convergence_plot(pd.DataFrame(rows), absolute=absolute)
    _labelled(fig)
    assert len(fig.axes) == 2


def test_score_scatter(scores):
    act = scores + 0.1 * torch.rand(scores.shape, generator=torch.Generator().manual_seed(1))
    _labelled(plots.score_scatter(act, scores, k=5))
    with pytest.raises(ValueError):
        plots.score_scatter(act[:2], scores)


def test_share_plot():
    shares = pd.DataFrame(
        {"fact_id": ["f/1"] * 4 + ["f/2"] * 2, "layer": [1, 2, 3, 4, 1, 2], "neuron": [5, 6, 7, 8, 5, 9],
         "share": [1.0, 0.75, 0.5, 0.25, 1.0, 0.5]}
    )
    fig = plots.share_plot(shares, p=0.7)
    _labelled(fig)
    assert len(fig.axes) == 2


def test_numpy_input():
    _labelled(plots.attribution_heatmap(np.random.default_rng(0).random((3, 8)), k=4))


def test_share_plot_panel_order_follows_titles():
    shares = pd.DataFrame({"fact_id": ["a", "b"], "layer": [0, 1], "neuron": [2, 3], "share": [1.0, 0.5]})
    fig = plots.share_plot(shares, p=0.7, titles={"b": "fact b", "a": "fact a"})
    assert fig.axes[0].get_title().startswith("fact b")


# -- the suppress / amplify figures: readable at the book's column width ------------------------------


def _by_relation(n_relations: int = 34, empty: str = "P103") -> pd.DataFrame:
    """A synthetic suppress-amplify ``by_relation`` table; relation ``empty`` has no neuron in any set."""
    rng = np.random.default_rng(0)
    relations = [f"P{i}" for i in rng.choice(np.arange(10, 1500), n_relations - 1, replace=False)] + [empty]
    rows = []
    for relation in relations:
        for scope in ("own", "unrelated"):
            for operation, sign in (("suppress", -1), ("amplify", 1)):
                for method in ("ig", "activation"):
                    none = relation == empty
                    rows.append({"relation": relation, "scope": scope, "operation": operation, "method": method,
                                 "n_facts": 10, "n_facts_with_kn": 0 if none else 7, "n_prompts": 60,
                                 "change_ratio": 0.0 if none else sign * rng.uniform(0.01, 30 if sign > 0 else 0.99)})
    return pd.DataFrame(rows)


def _readable_at_column_width(fig: Figure, width: float = 6.9, min_points: float = 9) -> None:
    """No wider than the text column (so shown at about its native size), no text under ``min_points``,
    no overlapping tick labels, and the figure's legend clear of every panel."""
    assert fig.get_figwidth() <= width + 1e-9
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert texts and min(t.get_fontsize() for t in texts) >= min_points
    for ax in fig.axes:
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in ticks if t.get_visible() and t.get_text()]
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), "tick labels overlap"
    figure_box = fig.bbox
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        assert figure_box.x0 - 1 <= box.x0 and box.x1 <= figure_box.x1 + 1, "legend wider than the figure"
        assert not any(box.overlaps(ax.get_tightbbox(renderer)) for ax in fig.axes), "legend covers a panel"
    for ax in fig.axes:
        title = ax.title.get_window_extent(renderer)
        assert title.y1 <= figure_box.y1 + 1, "clipped title"


def test_change_by_relation():
    frame = _by_relation()
    fig = plots.change_by_relation(frame)
    _labelled(fig)
    _readable_at_column_width(fig)
    left, right = fig.axes
    assert [left.get_title(), right.get_title()] == [plots.OPERATION_TITLES["suppress"], plots.OPERATION_TITLES["amplify"]]
    names = [t.get_text() for t in left.get_yticklabels()]
    assert len(names) == 34 and names == sorted(names, key=lambda r: int(r[1:]))  # P19 before P101
    assert left.get_ylim()[0] > left.get_ylim()[1]  # first relation on top
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(plots.NEURON_SETS.values())
    assert any(t.get_text().startswith("no neurons found") for t in left.texts)
    # 34 relations x 2 neuron sets per panel, own scope only
    assert len(left.patches) == len(right.patches) == 68


def test_change_by_scope():
    fig = plots.change_by_scope(_by_relation())
    _labelled(fig)
    _readable_at_column_width(fig)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["suppressed", "amplified"]
    assert len(fig.legends) == 1 and fig.axes[0].get_legend() is None


# -- readable headers for the tables of the book's chapters -------------------------------------------


def _fields(summary_class) -> list[str]:
    return [f.name for f in dataclasses.fields(summary_class)]


def _columns(frame_or_names) -> pd.DataFrame:
    names = list(frame_or_names)
    return pd.DataFrame([[0] * len(names)], columns=names)


# The tables the chapters show, by field names as kn_lib makes them (one frame per displayed table).
CHAPTER_TABLES = {
    "statistics summary": _fields(StatisticsSummary),
    "statistics live slice": ["fact_id", "n_kn_live", "n_kn_stored"],
    "manipulation summary": _fields(ManipulationSummary),
    "manipulation by relation": list(manipulation_by_relation(pd.DataFrame()).columns),
    "bingrel summary": [f for f in _fields(BingRelSummary) if f != "n_sentences"]
    + [f"n_sentences_{t}" for t in TYPES],
    "updating summary": _fields(UpdateSummary) + ["run"],
    "updating live slice": ["fact_id", "neuron_set", "old_object_live", "new_object_live", "top1_after_live",
                            "top1_after_stored", "success_live"],
    "erasing table 5": list(table5(
        pd.DataFrame(columns=["erased_relation", "scope", "p_before", "p_after", "correct_before", "correct_after"]),
        pd.DataFrame(columns=["relation"])).columns),
    "erasing summary": _fields(EraseSummary),
    "erasing neurons": ["relation", "neurons", "max_facts", "mean_facts", "layers"],
    "claims": list(claim_row("c", "Table 2", 1.0, Interval(1.0, 0.5, 1.5, 30, 100, 0.95, 0))),
    "claims reach": ["quantity", "neurons", "percent", "ci_low", "ci_high", "n_prompts", "n_edits"],
    "performance by path": ["seconds_per_prompt", "seconds_9_prompts", "gflop_per_prompt", "gflops", "speedup_vs_reference",
                            "rel_diff", "peak_rss_mb", "load_1min", "prompts", "cpu_seconds_per_prompt",
                            "cpu_speedup_vs_reference"],
}


@pytest.mark.parametrize("table", sorted(CHAPTER_TABLES))
def test_readable_headers_are_labelled_and_distinct(table):
    fields = CHAPTER_TABLES[table]
    headers = list(plots.readable(_columns(fields)).columns)
    assert not [h for h in headers if "_" in h], f"{table}: raw field names left"
    # every field with an underscore has its own label (not just spaces for underscores) ...
    assert not [f for f in fields if "_" in f and f not in plots.COLUMN_LABELS], f"{table}: fields without a label"
    # ... and no two fields of one table read the same
    clashes = pd.Series(fields, index=headers).groupby(level=0).apply(list)
    assert not clashes[clashes.map(len) > 1].to_dict(), f"{table}: two fields under one header"


def test_readable_index_names_series_and_overrides():
    frame = pd.DataFrame({"n_facts": [3], "ci_low": [0.1]}, index=pd.Index(["P19"], name="relation"))
    frame.columns.name = "neuron_set"
    shown = plots.readable(frame, {"n_facts": "facts with knowledge neurons"})
    assert list(shown.columns) == ["facts with knowledge neurons", "95% CI low"]
    assert shown.index.name == "relation" and shown.columns.name == "neuron set"
    assert list(frame.columns) == ["n_facts", "ci_low"]  # the input is left alone
    row = plots.readable(pd.Series({"relation": "P19", "n_prompts": 12, "change_ratio": -0.5}))
    assert list(row.index) == ["relation", "prompts", plots.COLUMN_LABELS["change_ratio"]]
    numbered = plots.readable(pd.Series([1, 2], index=[0, 1]))
    assert list(numbered.index) == [0, 1]  # labels that are not field names stay as they are


def test_erase_change_bars_panels_in_order_each_on_its_own_scale():
    changes = pd.DataFrame({
        "source": ["paper"] * 4 + ["ours"] * 4,
        "relation": ["P19", "P19", "P27", "P27"] * 2,
        "prompts": ["erased", "other"] * 4,
        "change": [106.6, 1.1, 36.8, 4.1, 19221.0, 1308.9, 12.8, -11.7],
    })
    fig = plots.erase_change_bars(changes, sources=["paper", "ours"])
    _labelled(fig)
    _readable_at_column_width(fig)
    left, right = fig.axes
    assert [left.get_title(), right.get_title()] == ["paper", "ours"]  # the caption's left / right
    fig.canvas.draw()
    for ax, largest in ((left, 106.6), (right, 19221.0)):
        # the panel's largest bar reaches most of its height: no panel drawn flat on another's scale
        top = ax.transData.transform((0, largest))[1]
        bottom, height = ax.bbox.y0, ax.bbox.height
        assert (top - bottom) / height > 0.6
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "the erased relation's prompts", "other relations' prompts"]


def test_outcome_bars_legend_clear_of_the_bars_and_n_in_labels():
    from kn_lib.book.tables import update_outcomes

    table = pd.DataFrame({"run": ["paper's edit"] * 5 + ["sign-aware, λ2 = 2"] * 5,
                          "success": [True, True, False, False, False] * 2,
                          "changed": [True, True, True, False, False] * 2})
    fig = plots.outcome_bars(update_outcomes(table))
    _labelled(fig)
    _readable_at_column_width(fig)  # includes: the legend covers no panel
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["paper's edit (n = 5)", "sign-aware, λ2 = 2 (n = 5)"]


def test_activation_by_type_one_panel_per_neuron_set_each_on_its_own_scale():
    rng = np.random.default_rng(0)
    rows = [{"relation": f"P{i}", "type": t, "method": m,
             "activation": (rng.normal(0.2, 1.0) if m == "ig" else rng.normal(25, 5)) if i else -40.0}
            for i in range(12) for t in ("T1", "T2", "T3") for m in ("ig", "activation")]
    fig = plots.activation_by_type(pd.DataFrame(rows))
    _labelled(fig)
    _readable_at_column_width(fig)
    left, right = fig.axes
    assert left.get_title().startswith("knowledge neurons") and "n = 12 relations" in left.get_title().replace("\n", " ")
    assert right.get_title().startswith("baseline neurons")
    fig.canvas.draw()
    # the knowledge neurons' boxes (quartiles about ±0.7 around 0.2) span a visible part of their panel,
    # despite the -40 outlier and the baseline's activations near 25 in the other panel
    low, high = (left.transData.transform((0, v))[1] for v in (-0.5, 0.9))
    assert (high - low) / left.bbox.height > 0.15
    assert left.get_yscale() == right.get_yscale() == "symlog"
