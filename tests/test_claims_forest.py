"""The claims chapter's forest plot: every verdict has a colour, and a row whose values lie orders of
magnitude apart gets a log axis with its unit, so the paper's value is not drawn at zero."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from kn_lib.book import plots  # noqa: E402
from kn_lib.book.claims import VERDICTS, Interval, claim_row  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _iv(est, low, high, n=30):
    return Interval(est, low, high, n, 100, 0.95, 0)


def test_every_verdict_has_its_own_colour():
    colours = plots.verdict_colours()
    assert set(colours) == set(VERDICTS)
    assert len({tuple(c) for c in colours.values()}) == len(colours)


def test_forest_rows_get_a_scale_on_which_the_paper_value_is_visible():
    claims = pd.DataFrame([
        claim_row("suppressing lowers p", "Figure 4", -29.0, _iv(-50, -60, -40), unit="%"),
        claim_row("edits barely change perplexity", "Table 6", 8.4, _iv(5e7, 3e6, 5e8), unit="Δ perplexity",
                  ceiling=True),
        claim_row("erasing hurts its relation more", "Table 5", 98.0, _iv(2e5, -1e3, 3e5, n=12), unit="points"),
        claim_row("no unit given", "Table 6", 7.2, _iv(1e9, 1e6, 1e12), ceiling=True),
    ])
    fig = plots.claims_forest(claims)
    linear, log, symlog, unitless = fig.axes[:4]
    assert linear.get_xscale() == "linear" and linear.get_xlabel() == "%"
    assert log.get_xscale() == "log" and log.get_xlabel() == "Δ perplexity (log scale)"
    assert symlog.get_xscale() == "symlog" and symlog.get_xlabel().startswith("points (symmetric log scale")
    assert unitless.get_xlabel() == "no unit (log scale)"
    # on the log axis the paper's 8.4 and our interval both lie inside the drawn range
    low, high = log.get_xlim()
    assert low < 8.4 and high > 5e8
    titles = [ax.get_title(loc="left") for ax in fig.axes[:4]]
    assert "[exceeded; n = 30]" in titles[1] and "[confirmed, larger; n = 30]" in titles[0]
