"""Generated phrases read right in every branch."""

from __future__ import annotations

import pytest

from kn_lib.book.wording import plural, search_end


def test_plural():
    assert plural(1, "fact") == "1 fact" and plural(0, "fact") == "0 facts" and plural(2, "match", "matches") == "2 matches"


@pytest.mark.parametrize("reason, phrase", [
    ("in range", "the mean count in range"), ("6 evaluations", "the official limit of 6 evaluations, the count still out of range"),
    ("p reached 1", "p reaching 1, the count still out of range"), ("overshoot", "the count jumping over the range"),
    ("non-empty kept", "no neuron at its last p, so the last p that gave neurons was kept"), ("no facts", "no usable fact"),
    ("something new", "outcome “something new”"),
])
def test_search_end_covers_every_reason_refine_gives(reason, phrase):
    assert search_end(reason) == phrase
