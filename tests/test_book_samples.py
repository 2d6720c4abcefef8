"""The book's sample helpers: several samples' tables side by side, missing ones named."""

import pandas as pd

from kn_lib.book import KNOWN_EARLIER, KNOWN_FACTS, KNOWN_OFFICIAL, BookSample, known_facts_sample, side_by_side
from kn_lib.run.results import ResultsNotFound


class _Fake:
    def __init__(self, frame=None):
        self.frame = frame

    def load(self, stage, table=None, **kwargs):
        if self.frame is None:
            raise ResultsNotFound(f"no {stage}")
        return self.frame.assign(stage=stage, table=table)


def test_side_by_side_stacks_samples_and_names_the_missing():
    a = _Fake(pd.DataFrame({"method": ["ig", "activation"], "n_facts": [3, 3]}))
    b = _Fake(pd.DataFrame({"method": ["ig"], "n_facts": [7]}))
    frame, missing = side_by_side({"small": a, "big": b, "never run": _Fake()}, "statistics")
    assert missing == ["never run"]
    assert list(frame.columns)[0] == "sample" and frame["sample"].tolist() == ["small", "small", "big"]
    assert frame["n_facts"].tolist() == [3, 3, 7] and set(frame["table"]) == {"summary"}


def test_side_by_side_with_nothing_run_is_empty_with_a_sample_column():
    frame, missing = side_by_side({"x": _Fake()}, "update", "table")
    assert frame.empty and "sample" in frame.columns and missing == ["x"]


def test_known_facts_sample_is_the_preset_run():
    sample = known_facts_sample("tiny-random-llama")
    assert sample == BookSample(model="tiny-random-llama", **KNOWN_FACTS, params=KNOWN_OFFICIAL)
    assert sample.settings().param("edits_per_relation") == 10  # the paper's, over the preset's 30
    earlier = known_facts_sample("tiny-random-llama", params=KNOWN_EARLIER)
    assert earlier.settings().param("edits_per_relation") == 30 and earlier.settings().param("selection") == "ours"
    smaller = known_facts_sample("tiny-random-llama", facts_per_relation=8)
    assert (smaller.preset, smaller.facts_per_relation) == ("known-facts", 8)
    assert smaller.settings().known == "most"
    assert sample.settings().known == "most" and sample.settings().facts_per_relation == 30
