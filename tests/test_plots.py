"""Smoke tests of kn_lib.book.plots on synthetic data: each function draws, labels its axes, returns a Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from kn_lib.book import plots  # noqa: E402


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
