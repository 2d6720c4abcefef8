"""The one table formatter (``kn_lib.book.table_style.shown``): what a rendered cell may never show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kn_lib.book.table_style import MAX_COLUMNS, cell_text, shown


@pytest.mark.parametrize("value, text", [
    (float("nan"), "—"), (None, "—"), (pd.NA, "—"), (True, "✓"), (np.bool_(False), "✗"), (125732, "125,732"),
    (np.int64(3), "3"), (16.119796, "16.1"), (1.764445e9, "1,764,445,000"), (6.1e-05, "0.0000610"), ("P19", "P19"),
])
def test_cell_text(value, text):
    assert cell_text(value) == text


def test_shown_hides_the_index_and_writes_no_nan_or_scientific_notation():
    frame = pd.DataFrame({"relation": ["P19", "P36"], "estimate": [16.119796, float("nan")], "ci_low": [1.83e10, None],
                          "converged": [True, False]})
    html = shown(frame).to_html()
    for bad in ("NaN", "nan", "None", "e+", "16.119796"):
        assert bad not in html
    assert "16.1" in html and "—" in html and "✓" in html and "95% CI low" in html
    assert "row_heading" not in html  # no index column


def test_a_named_index_becomes_a_column():
    html = shown(pd.Series([1.5, 2.5], index=pd.Index(["P19", "P36"], name="relation"), name="change")).to_html()
    assert "P19" in html and "relation" in html


def test_a_table_wider_than_the_text_column_is_refused():
    with pytest.raises(ValueError, match="at most 7 columns"):
        shown(pd.DataFrame({f"c{i}": [1] for i in range(MAX_COLUMNS + 1)}))
