"""The cases of the exercise checks: the seeded, small inputs each check calls the student's function on.

Tiny random models of the registry in float64 (so that a check can use tight tolerances) and small
hand-made tables, built here apart from ``kn_lib.book.checks``, so that a check there reads as what it
holds the student to: the reference, the known mistakes and the hints. Seconds on a CPU, no download.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import pandas as pd
import torch

Neuron = tuple[int, int]


@dataclass(frozen=True)
class Case:
    """One call of the student's function: what it is (shown on failure) and its arguments."""

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


# -- tiny models: float64 copies of the registry's seeded tiny models ------------------------------------

@lru_cache(maxsize=None)
def _tiny(kind: str):
    """The registry's tiny random model (seed 0) in float64, so that a check can use tight tolerances."""
    from ..model_registry import tiny_bert, tiny_llama
    from ..models import adapter_for

    tiny = {"bert": tiny_bert, "llama": tiny_llama}[kind]()
    return adapter_for(copy.deepcopy(tiny.model).double(), tiny.tokenizer, f"tiny-random-{kind}-float64")


# -- attribution: Eq. (5), the right Riemann sum of one layer --------------------------------------------

def _probability_of(adapter, prompt, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """P_x(w): p(answer) with layer ``layer``'s activation at the answer position set to w [n_neurons]."""

    def p_of(w: torch.Tensor) -> torch.Tensor:
        with adapter.patch(layer, prompt.answer_pos, lambda _: w[None]):
            logits = adapter.logits_at(prompt.input_ids[None], prompt.answer_pos)
        return logits.softmax(-1)[0, prompt.target_id]

    return p_of


def _ig_cases() -> list[Case]:
    cases = []
    for kind, template, subject, obj, layer, steps in (
        ("bert", "[X] was born in [Y] .", "alice", "paris", 2, 4),
        ("llama", "the capital of [X] is [Y] .", "france", "paris", 1, 5),
        ("llama", "[X] was born in [Y] .", "bob", "london", 0, 3),
        ("bert", "the capital of [X] is [Y] .", "italy", "rome", 0, 1),
    ):
        adapter = _tiny(kind)
        prompt = adapter.encode(template, subject, obj)
        w_bar = adapter.activations(prompt)[layer]
        name = f"tiny random {kind.upper() if kind == 'bert' else 'LLaMA'}, {prompt.text!r}, layer {layer}, m = {steps}"
        cases.append(Case(name, (_probability_of(adapter, prompt, layer), w_bar, steps), {"_at": (adapter, prompt, layer)}))
    return cases


# -- statistics: the official refinement rule -------------------------------------------------------------

def _coarse_sets(counts: Sequence[int], n: int, seed: int) -> list[set[Neuron]]:
    """n prompts' coarse sets in which neuron (5, j) appears in exactly counts[j] prompts (seeded)."""
    rng = random.Random(seed)
    sets: list[set[Neuron]] = [set() for _ in range(n)]
    for j, c in enumerate(counts):
        for prompt in rng.sample(range(n), c):
            sets[prompt].add((5, j))
    return sets


def _refine_cases() -> list[Case]:
    spec = [(10, 0.5, (10, 6, 5, 4, 1)), (4, 0.5, (4, 3, 2, 1)), (2, 0.5, (2, 1)), (8, 0.75, (8, 6, 5, 3)),
            (12, 0.25, (3, 2, 12, 7))]
    return [Case(f"n = {n} prompts, p = {p}, neurons found in {list(c)} prompts", (_coarse_sets(c, n, seed), p))
            for seed, (n, p, c) in enumerate(spec)]


# -- manipulation: the change ratio of Figures 4 and 5 ------------------------------------------------------

def _ratio_cases() -> list[Case]:
    rng = random.Random(4)
    cases = [Case("one prompt, p 0.2 -> 0.1", ([0.2], [0.1])),
             Case("two prompts, one near zero", ([0.5, 0.001], [0.25, 0.004]))]
    for n in (5, 9):
        before = [rng.uniform(0.001, 0.6) for _ in range(n)]
        after = [b * rng.uniform(0.1, 2.5) for b in before]
        cases.append(Case(f"{n} random prompts (seeded)", (before, after)))
    return cases


# -- bingrel: Table 4's average activation ----------------------------------------------------------------

def _activation_table(seed: int) -> pd.DataFrame:
    """Activations of knowledge neurons on sentences, with unequal numbers of sentences, neurons and facts."""
    rng = random.Random(seed)
    rows = []
    for r, relation in enumerate(("P19", "P36", "P101")[: 2 + seed % 2]):
        for f in range(1 + (r + seed) % 3):
            neurons = [(rng.randrange(3), rng.randrange(48)) for _ in range(1 + rng.randrange(3))]
            for kind in ("T1", "T2", "T3"):
                for sentence in range(1 + rng.randrange(4)):
                    for layer, neuron in neurons:
                        rows.append({"relation": relation, "fact_id": f"{relation}/{f}", "type": kind,
                                     "sentence_id": sentence, "layer": layer, "neuron": neuron,
                                     "activation": round(rng.gauss(0.3 if kind == "T1" else 0.0, 1.0), 3)})
    return pd.DataFrame(rows)


# -- updating: the value-slot update of section 5.1 ----------------------------------------------------------

def _update_cases() -> list[Case]:
    from ..experiments.interventions import value_slot

    cases = []
    for kind, layer, index, old, new, l1, l2 in (("llama", 2, 7, "paris", "london", 1.0, 8.0),
                                                 ("bert", 1, 30, "rome", "berlin", 1.0, 8.0),
                                                 ("llama", 0, 41, "france", "italy", 2.0, 3.0)):
        adapter = _tiny(kind)
        vocab = adapter.tokenizer.get_vocab()
        embeddings = adapter.model.get_input_embeddings().weight.detach()
        slot = value_slot(adapter.projections[layer], index).detach().clone()
        args = (slot, embeddings[vocab[old]].clone(), embeddings[vocab[new]].clone())
        cases.append(Case(f"tiny random {kind}, neuron {index} of layer {layer}, {old!r} -> {new!r}, "
                          f"lambda1 = {l1}, lambda2 = {l2}", args, {"lambda1": l1, "lambda2": l2,
                                                                   "_at": (adapter, (layer, index), vocab[old], vocab[new])}))
    return cases


# -- erasing: a relation's most frequent knowledge neurons ----------------------------------------------------

def _bag_cases() -> list[Case]:
    rng = random.Random(7)
    pool = [(rng.randrange(30), rng.randrange(1536)) for _ in range(9)]
    random_bags = [rng.sample(pool, rng.randrange(1, 5)) for _ in range(12)]
    return [
        Case("3 facts, no ties", ([[(29, 5), (28, 7)], [(29, 5)], [(29, 5), (28, 7), (3, 1)]], 2)),
        Case("ties: (29, 5) is seen before (3, 1)", ([[(29, 5), (3, 1)], [(3, 1), (29, 5)], [(10, 2)]], 2)),
        Case("a bag that lists a neuron twice", ([[(4, 4), (4, 4)], [(2, 2)], [(2, 2)], [(4, 4), (9, 9)]], 1)),
        Case("k larger than the number of neurons", ([[(1, 1)], [(0, 3), (1, 1)]], 20)),
        Case("12 facts drawn from 9 neurons (seeded)", (random_bags, 5)),
    ]


# -- claims: the verdict of an effect claim --------------------------------------------------------------------

def _verdict_cases() -> list[Case]:
    cases = [(-29.03, -35, -15), (-29.03, -20, -10), (-29.03, -60, -35), (-29.03, -40, 3), (-29.03, 1, 7),
             (-29.03, -40, 0.0), (-29.03, -29.03, -20), (-29.03, -50, -12), (31.17, 20, 40), (31.17, 0.0, 12), (31.17, -9, -2),
             (31.17, 35, 50), (31.17, 5, 25), (31.17, 20, 60), (31.17, 15.585, 46.755)]
    return [Case(f"paper {p:+}, our interval [{lo}, {hi}]", (p, lo, hi)) for p, lo, hi in cases]


# -- critiques: how much the edit layer and the localization explain ------------------------------------------

def _fit_cases() -> list[Case]:
    """Small (fact, layer) tables: success driven by layer, by localization, by both, and by neither."""
    cases = []
    for seed, (by_layer, by_loc) in enumerate(((1.0, 0.0), (0.0, 1.0), (0.6, 0.6), (0.0, 0.0))):
        rng = random.Random(seed)
        rows = []
        for f in range(12):
            for layer in range(4):
                loc = rng.random()
                score = by_layer * (layer == 2) + by_loc * loc + 0.5 * rng.random()
                rows.append({"fact_id": f"F/{f}", "layer": layer, "mass_share": loc,
                             "success": score > (0.8 if by_layer or by_loc else 0.3)})
        cases.append(Case(f"12 facts x 4 layers, success by layer {by_layer}, by localization {by_loc}",
                          (pd.DataFrame(rows),)))
    return cases
