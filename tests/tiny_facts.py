"""Facts, relations and knowledge-neuron tables in the tiny models' vocabulary (``kn_lib.model_registry.TINY_WORDS``)."""

from __future__ import annotations

from functools import lru_cache

import pandas as pd

from kn_lib.data import Relation
from kn_lib.pipeline import KNConfig, find_knowledge_neurons

RELATIONS = {
    "P19": Relation("P19", "place of birth", "N-1", ("[X] was born in [Y] .", "[X] is born in [Y] .", "[Y] is where [X] was born .")),
    "P36": Relation("P36", "capital", "1-1", ("the capital of [X] is [Y] .", "[X] capital city is [Y] .", "[Y] is the capital of [X] .")),
}

FACTS = [
    {"fact_id": "P19/0", "relation": "P19", "subject": "alice", "object": "paris"},
    {"fact_id": "P19/1", "relation": "P19", "subject": "bob", "object": "london"},
    {"fact_id": "P19/2", "relation": "P19", "subject": "carol", "object": "rome"},
    {"fact_id": "P19/3", "relation": "P19", "subject": "dave", "object": "berlin city"},  # two tokens
    {"fact_id": "P36/0", "relation": "P36", "subject": "france", "object": "paris"},
    {"fact_id": "P36/1", "relation": "P36", "subject": "england", "object": "london"},
    {"fact_id": "P36/2", "relation": "P36", "subject": "italy", "object": "rome"},
    {"fact_id": "P36/3", "relation": "P36", "subject": "germany", "object": "berlin"},
]


@lru_cache(maxsize=None)
def _activation_kns(adapter) -> tuple[pd.DataFrame, pd.DataFrame]:
    result = find_knowledge_neurons(adapter, FACTS, RELATIONS, KNConfig(method="activation", kn_low=2, kn_high=40), progress=False)
    return result.refined, result.prompts


def activation_kns(adapter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(refined, prompts) of the activation baseline on FACTS (the tiny random models have many
    coarse neurons, so the target mean count is widened to [2, 40]), computed once per adapter (copies)."""
    refined, prompts = _activation_kns(adapter)
    return refined.copy(), prompts.copy()


def refined_table(kns: dict[str, list[tuple[int, int]]], method: str = "hand") -> pd.DataFrame:
    """A refined table written by hand: {fact_id: [(layer, neuron), ...]}."""
    rows = [{"fact_id": f, "relation": f.split("/")[0], "layer": l, "neuron": n} for f, ns in kns.items() for l, n in ns]
    frame = pd.DataFrame(rows, columns=["fact_id", "relation", "layer", "neuron"])
    frame["model"], frame["method"] = "tiny", method
    return frame
