"""Which neurons matter? Attribution methods judged by exact ablation (beyond the paper).

For each fact the model knows, on its first ``prompts_per_fact`` prompts answered top-1:

1. every method of ``attribution_methods.METHODS`` scores all FFN neurons at the answer position (timed);
2. candidates: the union of every method's top ``top`` neurons and ``random_candidates`` neurons drawn
   uniformly (seeded per prompt); each candidate is zeroed alone and its exact drop
       drop(n) = log p(w) - log p(w | a_n = 0)
   measured (``exact_ablation``). The exact top-k is the k candidates of largest drop: a neuron outside
   every method's top 200 cannot enter it, so recall says which method finds the neurons another finds;
3. per method and k in ``ks``: recall@k = |method's top-k  n  exact top-k| / k; and the set ablation
   Delta_k = log p(w | method's top-k zeroed) - log p(w), with whether the answer stays top-1 (``flip``:
   it was and is no longer). ``random`` zeroes same-layer random neurons (the layers of ``ig-m20``'s
   top-k, seeded), ``refined`` the fact's refined knowledge neurons at their own k, ``exact`` the exact
   top-k (the best any ranking of these candidates can do);
4. Spearman's rank correlation of each score with the drop, over all candidates and over the random ones
   alone (an unbiased sample of all neurons).

The faithfulness curve of a method is -Delta_k against k; its area (``curve_area``: the mean over log k,
as the Mechanistic Interpretability Benchmark's CPR summarises a curve) is one number per method.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..adapters import ModelAdapter
from ..refine import Neuron
from .attribution_methods import METHODS, LogprobIncrease, ig_scores
from .controls import layer_matched_neurons
from .evaluation import Prompt, seeded_rng
from .exact_ablation import ablated_log_probs, single_neuron_effects


@dataclass(frozen=True)
class FaithfulnessConfig:
    steps: int = 20  # m of the paper's IG
    converged_steps: int = 32  # Gauss-Legendre nodes of ig-converged
    top: int = 200  # each method's top neurons that become candidates
    random_candidates: int = 200
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    prompts_per_fact: int = 1  # correctly answered prompts per fact, in template order
    logprob_increase: bool = True  # Yu & Ananiadou's score (LLaMA-style blocks only)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.ks or max(self.ks) > self.top or min(self.ks) < 1:
            raise ValueError(f"ks must lie in 1..top={self.top}, got {self.ks}")
        if self.prompts_per_fact < 1 or self.random_candidates < 0:
            raise ValueError("prompts_per_fact must be >= 1 and random_candidates >= 0")


@dataclass
class FactFaithfulness:
    """One prompt's rows: ``curve`` (method x k), ``ranks`` (method), ``effects`` (candidate)."""

    curve: list[dict] = field(default_factory=list)
    ranks: list[dict] = field(default_factory=list)
    effects: pd.DataFrame | None = None


def top_neurons(scores: torch.Tensor, k: int) -> list[Neuron]:
    """The k neurons (layer, index) of largest score, largest first (ties: the lower flat index)."""
    flat = scores.flatten().double()
    order = torch.argsort(-flat, stable=True)[:k]
    n = scores.shape[1]
    return [(int(i) // n, int(i) % n) for i in order]


def recall_at_k(found: Sequence[Neuron], truth: Sequence[Neuron]) -> float:
    """|found n truth| / |truth|."""
    return len(set(found) & set(truth)) / len(truth) if truth else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    if len(x) < 3:
        return float("nan")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def curve_area(ks: Sequence[int], drops: Sequence[float]) -> float:
    """Area under a faithfulness curve (drop against log k, trapezoids) over the log-k range: the mean drop."""
    x, y = np.log(np.asarray(ks, dtype=float)), np.asarray(drops, dtype=float)
    if len(x) == 1:
        return float(y[0])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def score_prompt(adapter: ModelAdapter, prompt: Prompt, config: FaithfulnessConfig,
                 logprob: LogprobIncrease | None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Every method's scores [n_layers, n_neurons] of one prompt, and the seconds each took."""
    timer = _Timer()
    scores = ig_scores(adapter, prompt.encoded, config.steps, config.converged_steps, timer)
    with timer("activation"):
        scores["activation"] = adapter.activations(prompt.encoded).float()
    if logprob is not None:
        with timer("logprob-increase"):
            scores["logprob-increase"] = logprob.scores(prompt.encoded)
    seconds = dict(timer.seconds)
    seconds["ig-left-m20"] += seconds["ig-m20"]  # its own cost: the right sum and one more gradient
    return {m: scores[m] for m in METHODS if m in scores}, seconds


def fact_faithfulness(adapter: ModelAdapter, prompt: Prompt, refined: Sequence[Neuron], config: FaithfulnessConfig,
                      logprob: LogprobIncrease | None = None) -> FactFaithfulness:
    """The benchmark's rows for one correctly answered prompt of a fact (module docstring)."""
    scores, seconds = score_prompt(adapter, prompt, config, logprob)
    rng = seeded_rng(config.seed, f"{prompt.fact_id}/{prompt.template_id}")
    tops = {m: top_neurons(s, config.top) for m, s in scores.items()}
    n_total = adapter.n_layers * adapter.n_neurons
    random_ids = rng.sample(range(n_total), min(config.random_candidates, n_total))
    randoms = [(i // adapter.n_neurons, i % adapter.n_neurons) for i in random_ids]
    candidates = list(dict.fromkeys([n for t in tops.values() for n in t] + randoms))
    start = time.perf_counter()
    log_p, correct, delta, stays = single_neuron_effects(adapter, prompt.encoded, candidates)
    exact_seconds = time.perf_counter() - start
    drop = (-delta).numpy()
    order = np.argsort(-drop, kind="stable")
    exact = [candidates[i] for i in order]
    sets: list[tuple[str, int, list[Neuron]]] = []
    for k in config.ks:
        sets += [(m, k, tops[m][:k]) for m in tops] + [("exact", k, exact[:k])]
        sets.append(("random", k, layer_matched_neurons(tops["ig-m20"][:k], adapter.n_neurons, rng)))
    if refined:
        sets.append(("refined", len(refined), list(refined)))
    set_log_p, set_top1 = ablated_log_probs(adapter, prompt.encoded, [s for _, _, s in sets])
    base = {"fact_id": prompt.fact_id, "relation": prompt.relation, "template_id": prompt.template_id}
    out = FactFaithfulness()
    for (method, k, neurons), lp, top1 in zip(sets, set_log_p.tolist(), set_top1.tolist()):
        truth = exact[:k]
        out.curve.append({**base, "method": method, "k": k, "recall": recall_at_k(neurons, truth),
                          "delta_log_p": lp - log_p, "correct_after": bool(top1), "flip": bool(correct and not top1),
                          "log_p_before": log_p})
    random_set = set(randoms)
    is_random = np.array([c in random_set for c in candidates])
    layers, indices = torch.tensor([l for l, _ in candidates]), torch.tensor([i for _, i in candidates])
    columns = {}
    for method, s in scores.items():
        values = s[layers, indices].double().numpy()
        columns[method] = values
        out.ranks.append({**base, "method": method, "spearman_candidates": spearman(values, drop),
                          "spearman_random": spearman(values[is_random], drop[is_random]), "seconds": seconds[method],
                          "n_candidates": len(candidates), "top_in_exact_top10": recall_at_k(tops[method][:10], exact[:10])})
    out.ranks.append({**base, "method": "exact", "spearman_candidates": 1.0, "spearman_random": 1.0, "seconds": exact_seconds,
                      "n_candidates": len(candidates), "top_in_exact_top10": 1.0})
    out.effects = pd.DataFrame({**base, "layer": layers.numpy(), "neuron": indices.numpy(),
                                "random_candidate": is_random, "drop": drop, "stays_top1": stays.numpy(), **columns})
    return out


def faithfulness(adapter: ModelAdapter, prompts_by_fact: Mapping[str, Sequence[Prompt]],
                 refined_by_fact: Mapping[str, Sequence[Neuron]], config: FaithfulnessConfig = FaithfulnessConfig(),
                 logprob: LogprobIncrease | None = None, progress=None) -> dict[str, pd.DataFrame]:
    """``fact_faithfulness`` of each fact's first ``prompts_per_fact`` prompts: tables ``curve``, ``ranks``,
    ``effects``. ``prompts_by_fact``: the correctly answered prompts of each fact, in template order."""
    curve, ranks, effects = [], [], []
    for fact_id, prompts in prompts_by_fact.items():
        for prompt in list(prompts)[: config.prompts_per_fact]:
            rows = fact_faithfulness(adapter, prompt, refined_by_fact.get(fact_id, []), config, logprob)
            curve += rows.curve
            ranks += rows.ranks
            effects.append(rows.effects)
        if progress is not None:
            progress(1)
    return {"curve": pd.DataFrame(curve), "ranks": pd.DataFrame(ranks),
            "effects": pd.concat(effects, ignore_index=True) if effects else pd.DataFrame()}
