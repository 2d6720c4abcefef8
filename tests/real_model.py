"""Knowledge neurons of a few facts on the real offline model, shared by the experiments' integration tests.

Import the fixtures into a test module (``from real_model import real_kn, single_thread``); the model
itself is conftest's session fixture ``smollm2``. The searches are cached per adapter, so every module
that imports the fixtures reuses one computation (a fixture imported into several modules is otherwise
run once per module).

Cost control: three facts the model answers correctly (two relations), at most six templates each
(among those a causal model can ask), the activation baseline for all three, integrated gradients (10
steps) for one fact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pytest
import torch

from kn_lib import data
from kn_lib.attribution import IGConfig
from kn_lib.pipeline import KNConfig, KNResult, find_knowledge_neurons

FACT_IDS = ("P37/11", "P37/27", "P106/22")  # Haiti -> French, Uruguay -> Spanish, Karl Taylor Compton -> physicist
IG_FACT_IDS = ("P37/11",)
TEMPLATES_PER_RELATION = 6
IG_STEPS = 10  # the paper uses 20; 10 halves the cost, and the mechanics under test do not depend on m


@dataclass(frozen=True)
class RealKN:
    adapter: object
    facts: list[dict]
    relations: dict[str, data.Relation]
    activation: KNResult  # the paper's baseline, all FACT_IDS
    ig: KNResult  # integrated gradients, IG_FACT_IDS only


def _facts_and_relations(source: data.DataSource) -> tuple[list[dict], dict[str, data.Relation]]:
    names = sorted({f.split("/")[0] for f in FACT_IDS})
    relations = {}
    for rid, rel in data.load_relations(names, source).items():
        askable = tuple(t for t in rel.templates if t.index("[X]") < t.index("[Y]"))  # causal: [X] before [Y]
        relations[rid] = dataclasses.replace(rel, templates=askable[:TEMPLATES_PER_RELATION])
    table = data.load_facts(names, source)
    index = {fid: i for i, fid in enumerate(table["fact_id"])}
    return [dict(table[index[f]]) for f in FACT_IDS], relations


@lru_cache(maxsize=None)
def _search(adapter, mirror: Path) -> RealKN:
    facts, relations = _facts_and_relations(data.DataSource(mirror=mirror))
    activation = find_knowledge_neurons(adapter, facts, relations, KNConfig(method="activation"), progress=False)
    ig_facts = [f for f in facts if f["fact_id"] in IG_FACT_IDS]
    ig = find_knowledge_neurons(adapter, ig_facts, relations, KNConfig(ig=IGConfig(steps=IG_STEPS)), progress=False)
    return RealKN(adapter, facts, relations, activation, ig)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread for every test of a module that imports this fixture (it is autouse), restored
    at the end of the module. On the shared 2-core development machine, two OpenMP threads contend with
    other processes: measured under load, a SmolLM2 forward pass was ~20x slower and a tiny-model one
    ~70x slower (0.29 s against 4 ms) than with one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def real_kn(smollm2, mirror) -> RealKN:
    return _search(smollm2, mirror)


def all_weights(adapter) -> dict[str, torch.Tensor]:
    """Copies of every parameter, to check that an experiment leaves the model bit-identical."""
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def same_weights(adapter, saved: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, saved[k]) for k, v in adapter.model.state_dict().items())


def describe(frame: pd.DataFrame) -> str:
    """A compact print of a result table, for the test log."""
    return frame.to_string(max_rows=40, max_colwidth=60)
