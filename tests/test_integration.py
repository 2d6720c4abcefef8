"""End to end on the real offline model: one fact the model knows, from data to refined neurons."""

import copy

import pytest
import torch

from kn_lib import data
from kn_lib.attribution import IGConfig, integrated_gradients, scaled_probability
from kn_lib.models import adapter_for
from kn_lib.pipeline import KNConfig, find_knowledge_neurons

pytestmark = pytest.mark.integration

FACT_ID = "P36/17"  # Kingdom of Scotland -> Edinburgh (capital), in the paper's fact set


@pytest.fixture(scope="module")
def fact(mirror):
    relation, index = FACT_ID.split("/")
    return data.load_facts([relation])[int(index)], data.load_relations([relation])


def test_one_fact_end_to_end(smollm2, fact):
    row, relations = fact
    assert (row["subject"], row["object"]) == ("Kingdom of Scotland", "Edinburgh")
    result = find_knowledge_neurons(smollm2, [row], relations, KNConfig(), progress=False)
    assert result.prompts["correct"].any()  # the model predicts the object for at least one prompt
    assert len(result.refined) > 0  # refined knowledge neurons are found
    # the refined set is exactly the coarse neurons in >= max(p n, 3) of the n prompts (official rule),
    # recounted here from the coarse table
    n, p = len(result.prompts), float(result.thresholds["p"].iloc[0])
    counts = result.coarse.groupby(["layer", "neuron"]).size()
    kept = {key for key, c in counts.items() if c >= max(p * n, 3) - 1e-9}
    assert kept == set(zip(result.refined["layer"], result.refined["neuron"]))
    # causal model: the templates with [Y] before [X] are skipped, each with its reason
    n_templates = len(relations["P36"].templates)
    assert len(result.prompts) + len(result.skipped) == n_templates
    assert result.skipped["reason"].str.contains("precedes").all()
    assert set(result.refined["model"]) == {"smollm2-135m"}


def test_completeness_and_fast_vs_reference_on_the_real_model(smollm2, fact):
    """fp32 fast and reference paths against a float64 reference on the same real model.

    Measured here: the fast path is within ~3e-6 of float64 (relative to the largest score), the fp32
    reference within ~2e-4: the fast path runs fewer fp32 operations per score, so it is the more exact.
    """
    row, relations = fact
    prompt = smollm2.encode(relations["P36"].templates[0], row["subject"], row["object"])
    layers = [0, 14, 29]
    fast = integrated_gradients(smollm2, prompt, layers=layers, config=IGConfig(method="fast"))
    ref = integrated_gradients(smollm2, prompt, layers=layers, config=IGConfig(method="reference"))
    exact64 = adapter_for(copy.deepcopy(smollm2.model).double(), smollm2.tokenizer, smollm2.name)
    exact = integrated_gradients(exact64, prompt, layers=layers, config=IGConfig(method="reference"))
    scale = exact.abs().max()
    assert (fast - exact).abs().max() <= 1e-4 * scale
    assert (ref - exact).abs().max() <= 1e-3 * scale


def test_completeness_gap_shrinks_with_m_on_the_real_model(smollm2, fact):
    """Per layer, attributions sum to p(full) - p(layer zeroed), up to a Riemann error that falls with m."""
    row, relations = fact
    prompt = smollm2.encode(relations["P36"].templates[0], row["subject"], row["object"])
    layers = [0, 14, 29]
    deltas = torch.tensor(
        [scaled_probability(smollm2, prompt, l, 1.0) - scaled_probability(smollm2, prompt, l, 0.0) for l in layers]
    )
    gaps = {}
    for m in (20, 200):
        sums = integrated_gradients(smollm2, prompt, layers=layers, config=IGConfig(steps=m)).double().sum(1)
        gaps[m] = (sums - deltas.double()).abs()
    assert gaps[200].sum() < gaps[20].sum()
    assert (gaps[200] <= 0.02 * deltas.abs() + 1e-5).all()
