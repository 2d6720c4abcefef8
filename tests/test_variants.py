"""The appendix's comparison (``kn_lib.book.variants``): one row per option, the largest move, and the
verdicts that change, on planted claims tables."""

from __future__ import annotations

import pandas as pd

from kn_lib.book.claims import compare_designs
from kn_lib.book.variants import CHANGED_COLUMNS, WHAT_COLUMNS, changed_claims, what_changes


def _claims(values: dict[str, tuple[float, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": c, "kind": "paper's metric", "n_clusters": 14, "ours": v, "ci_low": v - 10, "ci_high": v + 10,
                          "verdict": verdict} for c, (v, verdict) in values.items()])


def _compared(before, after) -> pd.DataFrame:
    c = compare_designs(_claims(before), _claims(after))
    return c[c["both_data"]].reset_index(drop=True)


def test_one_row_per_option_with_the_largest_move_and_the_changed_verdicts():
    compared = {
        "moves": _compared({"a": (-64.6, "confirmed, larger"), "b": (1.0, "holds")},
                           {"a": (-82.2, "confirmed, larger"), "b": (3.0, "confirmed, larger")}),
        "still": _compared({"a": (5.0, "holds")}, {"a": (5.0, "holds")}),
        "empty": _compared({"a": (5.0, "no data")}, {"a": (5.0, "holds")}),
        "rounding": _compared({"a": (62.21, "holds")}, {"a": (62.24, "holds")}),
    }
    summary = what_changes(compared).set_index("option")
    assert list(what_changes(compared).columns) == WHAT_COLUMNS
    assert summary.loc["moves", "verdicts changed"] == 1 and summary.loc["moves", "largest move"] == "b: 1 → 3"
    assert summary.loc["still", "largest move"] == "no estimate moves" and summary.loc["still", "verdicts changed"] == 0
    assert summary.loc["rounding", "largest move"] == "no estimate moves beyond rounding"
    assert summary.loc["empty", "claims compared"] == 0 and summary.loc["empty", "largest move"] == "—"
    changed = changed_claims(compared)
    assert list(changed.columns) == CHANGED_COLUMNS and len(changed) == 1
    assert changed.iloc[0]["headline"] == "1 [-9, 11]: holds" and changed.iloc[0]["with the option"].endswith("confirmed, larger")
