"""Knowledge attribution (Dai et al. 2022, section 3.2): integrated gradients over FFN neurons.

For a prompt x with answer y, let P_x(w^(l)) be the model's probability of y when layer l's FFN
intermediate activation at the answer position is set to w^(l) (every other activation as the model
computes it). The attribution of neuron i of layer l is integrated gradients from the zero baseline to
the observed activation \\bar w^(l), approximated with a Riemann sum of m steps.

Two implementations compute the same numbers:

* ``method="reference"``: the straightforward one, one forward + backward of the whole prompt per layer
  and batch of steps. Kept as the ground truth that faster paths are tested against.
* ``method="fast"`` (default): the layers run bottom-up once on one batch that grows as it climbs:
  each (prompt, layer, step) row joins at its own scaled layer from the recorded hidden state, so no row
  computes a layer below the one it scales; for causal LMs the prompt prefix runs once, its key/value
  cache is reused and only the last token is computed per row.
* ``method="packed"``: the previous fast path, kept for comparison in ``benchmarks/``: fixed-size passes
  of (layer, step) rows that all start at the pass's lowest scaled layer.

The batched paths' gradient sums (``fast``, ``packed``) are ``kn_lib.attribution_batched``'s; this module
holds the equations, the settings, the reference path and the checks (completeness, convergence).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from .adapters import EncodedPrompt, ModelAdapter
from .attribution_batched import _gradient_sums_fast, _gradient_sums_packed

Rule = Literal["right", "left", "gauss-legendre"]
Precision = Literal["float32", "bfloat16"]
MAX_STEPS = 1000  # bound on m (the paper uses 20; tests compare against 400 Gauss-Legendre nodes)


@dataclass(frozen=True)
class IGConfig:
    """Settings of the attribution; the defaults are the paper's."""

    steps: int = 20  # m, the number of Riemann steps (paper: 20)
    # "right": alpha = k/m, k = 1..m (the paper); "left": k = 0..m-1 (official scripts);
    # "gauss-legendre": m Gauss-Legendre nodes on [0, 1] (an option: exact for polynomials of degree 2m-1)
    rule: Rule = "right"
    method: Literal["fast", "packed", "reference"] = "fast"
    # fast: token rows per pass at its lowest scaled layer: batch_rows (prompt, step) units when each row
    # is one token (causal LMs, key/value cache), batch_rows // sequence length otherwise (masked LMs);
    # each unit brings one row per scaled layer, so the batch grows len(layers)-fold to the top.
    # packed: (layer, step) rows per pass; reference: steps per pass. Results do not depend on it.
    # None: by device, 50 on a CPU (as fast as 100 or 200 on SmolLM2 with 2 cores, 2.8 GB peak memory instead
    # of 4.8 GB: benchmarks/batch_rows.py) and 200 on a GPU (bigger products, memory to spare; not measured here)
    batch_rows: int | None = None
    # "bfloat16": matrix products in bf16 under autocast (an option, with its error measured in benchmarks/)
    precision: Precision = "float32"

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}, got {self.steps!r}")
        if self.rule not in ("right", "left", "gauss-legendre"):
            raise ValueError(f"rule must be 'right', 'left' or 'gauss-legendre', got {self.rule!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.method not in ("fast", "packed", "reference"):
            raise ValueError(f"method must be 'fast', 'packed' or 'reference', got {self.method!r}")
        if self.batch_rows is not None and (not _is_int(self.batch_rows) or self.batch_rows < 1):
            raise ValueError(f"batch_rows must be an integer >= 1 or None, got {self.batch_rows!r}")


def _is_int(value: object) -> bool:
    """An integer (Python's or numpy's), not a bool, a float (2.5, nan) or a string."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def default_batch_rows(device: torch.device) -> int:
    """``IGConfig.batch_rows`` when none is given: 50 on a CPU, 200 on a GPU."""
    return 200 if device.type == "cuda" else 50


def riemann_alphas(steps: int, rule: Rule = "right") -> torch.Tensor:
    """Scaling factors of the Riemann sum: k/m for k = 1..m (paper) or k = 0..m-1 (official code)."""
    return quadrature(steps, rule)[0]


def quadrature(steps: int, rule: Rule = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes alpha_k in [0, 1] and weights c_k (summing to 1) with  int_0^1 f ~ sum_k c_k f(alpha_k).

    Riemann rules have c_k = 1/m; Gauss-Legendre maps the Legendre nodes from [-1, 1] to [0, 1].
    """
    if rule == "gauss-legendre":
        import numpy as np

        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    k = torch.arange(1, steps + 1) if rule == "right" else torch.arange(0, steps)
    return k.double() / steps, torch.full((steps,), 1.0 / steps, dtype=torch.float64)


def integrated_gradients(
    adapter: ModelAdapter, prompt: EncodedPrompt, layers: list[int] | None = None, config: IGConfig = IGConfig()
) -> torch.Tensor:
    r"""Attribution scores [len(layers), n_neurons] of the FFN neurons at the answer position.

    Paper, section 3.2, Eq. (4)-(5), with the Riemann approximation

        Attr(w_i^(l)) = \bar w_i^(l) / m * \sum_{k=1}^{m} \partial P_x(k/m \bar w^(l)) / \partial w_i^(l)

    where \bar w^(l) is layer l's observed activation and P_x(\hat w^(l)) the probability of the answer
    with layer l's activation at the answer position replaced by \hat w^(l). One layer is scaled at a
    time. ``config.rule="left"`` uses k = 0..m-1 instead, as the official scripts do; in general the
    sum is \bar w_i \sum_k c_k \partial P_x(\alpha_k \bar w) / \partial w_i over ``quadrature``'s nodes.
    """
    return integrated_gradients_many(adapter, [prompt], layers, config)[0]


def integrated_gradients_many(
    adapter: ModelAdapter, prompts: list[EncodedPrompt], layers: list[int] | None = None, config: IGConfig = IGConfig()
) -> list[torch.Tensor]:
    """``integrated_gradients`` of several prompts (e.g. a fact's paraphrases); the fast path puts
    them in one batch (padded, with an attention mask) for bigger matrix products."""
    layers = list(range(adapter.n_layers)) if layers is None else list(layers)
    alphas, weights = quadrature(config.steps, config.rule)
    config = replace(config, batch_rows=config.batch_rows or default_batch_rows(adapter.device))
    if config.method == "fast":  # reads the activations (in fp32) in its own batched pass
        acts, grads = _gradient_sums_fast(adapter, prompts, layers, alphas, weights, config.batch_rows, config.precision)
        return [(a[layers] * g).float() for a, g in zip(acts, grads)]
    acts = [adapter.activations(p).double().cpu() for p in prompts]  # each [L, N], on the CPU like the sums (GPU runs too)
    with torch.autocast(adapter.device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16"):
        if config.method == "reference":
            grads = [_gradient_sums_reference(adapter, p, layers, a, alphas, weights, config.batch_rows) for p, a in zip(prompts, acts)]
        else:
            grads = _gradient_sums_packed(adapter, prompts, layers, acts, alphas, weights, config.batch_rows)
    return [(a[layers] * g).float() for a, g in zip(acts, grads)]


def activation_attribution(adapter: ModelAdapter, prompt: EncodedPrompt, layers: list[int] | None = None) -> torch.Tensor:
    r"""The paper's baseline (section 4.3): Attr_base(w_i^(l)) = \bar w_i^(l), the raw activation."""
    layers = list(range(adapter.n_layers)) if layers is None else list(layers)
    return adapter.activations(prompt)[layers]


def _probabilities(logits: torch.Tensor, target_id: int) -> torch.Tensor:
    return logits.float().softmax(-1)[:, target_id]


def _gradient_sums_reference(adapter, prompt, layers, acts, alphas, weights, steps_per_pass) -> torch.Tensor:
    """Weighted sum over steps of dP/dw at each scaled point; whole prompt, one layer at a time."""
    device, dtype = adapter.device, next(adapter.model.parameters()).dtype
    ids = prompt.input_ids.to(device)
    out = torch.zeros(len(layers), acts.shape[1], dtype=torch.float64)
    for row, layer in enumerate(layers):
        for chunk, chunk_weights in zip(alphas.split(steps_per_pass), weights.split(steps_per_pass)):
            scaled = (chunk[:, None] * acts[layer]).to(device, dtype).requires_grad_(True)  # [S, N]
            with adapter.patch(layer, prompt.answer_pos, lambda _: scaled):
                logits = adapter.logits_at(ids.expand(len(chunk), -1), prompt.answer_pos)
            (grad,) = torch.autograd.grad(_probabilities(logits, prompt.target_id).sum(), scaled)
            out[row] += (grad.double().cpu() * chunk_weights[:, None]).sum(0)
    return out


@torch.no_grad()
def scaled_probability(adapter: ModelAdapter, prompt: EncodedPrompt, layer: int, scale: float) -> float:
    """p(answer) with layer ``layer``'s activation at the answer position multiplied by ``scale``.

    ``scale=0`` is the zero baseline of integrated gradients; completeness says the layer's attributions
    sum to p(scale=1) - p(scale=0), up to the Riemann error.
    """
    with adapter.patch(layer, prompt.answer_pos, lambda a: a * scale):
        return adapter.answer_probability(prompt)


def completeness_table(adapter: ModelAdapter, prompt: EncodedPrompt, scores: torch.Tensor, layers: list[int] | None = None):
    """Per layer: the attributions' sum, p(full) - p(layer zeroed), and their gap (the Riemann error).

    Integrated gradients is *complete*: a layer's exact attributions sum to the change of p(answer)
    between the zero baseline and the observed activation; ``scores`` rows follow ``layers``.
    """
    import pandas as pd

    layers = list(range(adapter.n_layers)) if layers is None else list(layers)
    p_full = adapter.answer_probability(prompt)
    table = pd.DataFrame(
        {"layer": layers, "attribution_sum": scores.double().sum(1).numpy(),
         "delta_p": [p_full - scaled_probability(adapter, prompt, layer, 0.0) for layer in layers]}
    )
    table["gap"] = table["attribution_sum"] - table["delta_p"]
    return table


def convergence_table(
    adapter: ModelAdapter, prompt: EncodedPrompt, layers: list[int], steps: list[int], rules: tuple[Rule, ...] = ("right", "left")
):
    """Completeness gap per (steps, rule, layer): how fast each quadrature rule converges with m."""
    import pandas as pd

    frames = []
    for rule in rules:
        for m in steps:
            scores = integrated_gradients(adapter, prompt, layers=layers, config=IGConfig(steps=m, rule=rule))
            frames.append(completeness_table(adapter, prompt, scores, layers).assign(steps=m, rule=rule))
    return pd.concat(frames, ignore_index=True)
