"""Scores that rank FFN neurons for one prompt, beside the paper's integrated gradients (the faithfulness
benchmark, ``experiments.faithfulness``). Each returns [n_layers, n_neurons] at the answer position,
larger = more important for the answer; each is named once in ``METHODS``.

* ``ig-m20``: the paper's IG, right Riemann sum, m = 20 (``attribution.integrated_gradients``);
* ``ig-left-m20``: the official scripts' left sum, by the exact identity
      left_m = right_m - (a * dP(a) - a * dP(0)) / m
  (the two sums differ in their first and last node only), so it costs two one-step gradients more;
* ``ig-converged``: Gauss-Legendre with ``converged_steps`` nodes (32: exact for polynomials of degree 63;
  ``benchmarks/refined_agreement.py`` checks 64 nodes against 200);
* ``grad-x-act``: gradient x activation, a * dP(a) / dw: IG with one right-sum step (alpha = 1), which is
  attribution patching against the zero baseline (Kramar et al. 2024);
* ``activation``: the paper's baseline, the raw activation a;
* ``logprob-increase`` (Yu & Ananiadou 2024, arXiv 2312.12141): the increase of the answer's log
  probability when the neuron's value vector a_i v_i is added to the residual stream h^(l-1) entering its
  layer and read through the final norm and the unembedding, with no later layer:
      Imp(i, l) = log p(w | h^(l-1) + a_i v_i) - log p(w | h^(l-1)),   p(. | x) = softmax(W_U RMSNorm(x)).
  One forward pass; its cost is a [vocab, n_neurons] matrix per layer (W_U diag(g) V_l), made once per
  model and kept (``LogprobIncrease``). Defined for blocks whose FFN output is added to the residual as
  it is (LLaMA, SmolLM); Gemma's post-FFN norm mixes all neurons and is refused.
"""

from __future__ import annotations

import torch

from ..adapters import EncodedPrompt, ModelAdapter
from ..attribution import IGConfig, integrated_gradients, integrated_gradients_many

METHODS = ("ig-m20", "ig-left-m20", "ig-converged", "grad-x-act", "activation", "logprob-increase")


def grad_x_activation(adapter: ModelAdapter, prompt: EncodedPrompt) -> torch.Tensor:
    """a_i * dP/dw_i at the observed activation: integrated gradients with m = 1, right rule (alpha = 1)."""
    return integrated_gradients(adapter, prompt, config=IGConfig(steps=1, rule="right"))


def left_from_right(right: torch.Tensor, grad_x_act: torch.Tensor, grad_x_act_at_zero: torch.Tensor, steps: int) -> torch.Tensor:
    r"""The left Riemann sum from the right one: (1/m) \sum_{k=0}^{m-1} a g(k/m) = right - (a g(1) - a g(0)) / m."""
    return right - (grad_x_act - grad_x_act_at_zero) / steps


def ig_scores(adapter: ModelAdapter, prompt: EncodedPrompt, steps: int = 20, converged_steps: int = 32,
              timer=None) -> dict[str, torch.Tensor]:
    """``ig-m20``, ``ig-left-m20``, ``ig-converged`` and ``grad-x-act`` of one prompt. ``timer(name)`` (a
    context manager, optional) times each computation."""
    import contextlib

    timer = timer or (lambda name: contextlib.nullcontext())
    with timer("ig-m20"):
        right = integrated_gradients_many(adapter, [prompt], config=IGConfig(steps=steps, rule="right"))[0]
    with timer("grad-x-act"):
        gxa = grad_x_activation(adapter, prompt)
    with timer("ig-left-m20"):  # on top of the right sum: the gradient at alpha = 0
        at_zero = integrated_gradients(adapter, prompt, config=IGConfig(steps=1, rule="left"))
    with timer("ig-converged"):
        converged = integrated_gradients_many(adapter, [prompt], config=IGConfig(steps=converged_steps, rule="gauss-legendre"))[0]
    return {"ig-m20": right, "ig-left-m20": left_from_right(right, gxa, at_zero, steps), "ig-converged": converged, "grad-x-act": gxa}


class LogprobIncrease:
    """Yu & Ananiadou's log-probability increase for every FFN neuron of a prompt (module docstring).

    With RMSNorm(x) = g * x / r(x), r(x) = sqrt(mean(x^2) + eps), the logits of h + a_i v_i are
    (z + a_i M[:, i]) / r_i with z = W_U (g * h), M = W_U diag(g) V_l and
    r_i^2 = (|h|^2 + 2 a_i h.v_i + a_i^2 |v_i|^2) / d + eps: one [vocab, n_neurons] product per layer,
    computed on first use and kept (SmolLM2-135M: 30 x 49,152 x 1,536 floats, 9 GB).
    """

    def __init__(self, adapter: ModelAdapter, chunk: int = 512) -> None:
        model = adapter.model
        if any(hasattr(block, "post_feedforward_layernorm") for block in adapter.blocks):
            raise NotImplementedError(f"{adapter.name}: the FFN output passes a post-FFN norm before the residual, so a neuron's "
                                      "value vector is not its contribution; logprob-increase is defined for LLaMA-style blocks")
        norm = model.base_model.norm
        self.eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        d = norm.weight.shape[0]
        with torch.no_grad():
            ones = torch.ones(1, d, dtype=norm.weight.dtype, device=adapter.device)
            self.gain = (norm(ones)[0] * (1 + self.eps) ** 0.5).float()  # RMSNorm(1) = g / sqrt(1 + eps)
        self.unembed = model.get_output_embeddings().weight.float()  # [vocab, d]
        if getattr(model.get_output_embeddings(), "bias", None) is not None:
            raise NotImplementedError(f"{adapter.name}: an unembedding bias is not supported")
        self.adapter, self.chunk = adapter, chunk
        self._mixed: dict[int, torch.Tensor] = {}

    def mixed(self, layer: int) -> torch.Tensor:
        """M_l = W_U diag(g) V_l [vocab, n_neurons], once per layer."""
        if layer not in self._mixed:
            values = self.adapter.projections[layer].weight.float()  # [d, N]
            with torch.no_grad():
                self._mixed[layer] = self.unembed @ (self.gain[:, None] * values)
        return self._mixed[layer]

    @torch.no_grad()
    def scores(self, prompt: EncodedPrompt) -> torch.Tensor:
        """Imp [n_layers, n_neurons] of one prompt."""
        adapter = self.adapter
        pos = torch.tensor([prompt.answer_pos])
        hidden_in, acts, _ = adapter.record(pos, input_ids=prompt.input_ids[None].to(adapter.device))
        out = torch.empty(adapter.n_layers, adapter.n_neurons)
        d, t = self.gain.shape[0], prompt.target_id
        for layer in range(adapter.n_layers):
            h = hidden_in[layer][0, prompt.answer_pos].float()
            a = acts[0, layer].float()
            values = adapter.projections[layer].weight.float()  # [d, N]
            z = self.unembed @ (self.gain * h)  # [vocab]
            r_h = torch.sqrt(h.pow(2).mean() + self.eps)
            base = z[t] / r_h - torch.logsumexp(z / r_h, 0)
            r = torch.sqrt((h.pow(2).sum() + 2 * a * (h @ values) + a.pow(2) * values.pow(2).sum(0)) / d + self.eps)  # [N]
            mixed = self.mixed(layer)
            for start in range(0, len(a), self.chunk):
                s = slice(start, start + self.chunk)
                logits = torch.addcmul(z[:, None], mixed[:, s], a[None, s]).div_(r[s])  # [vocab, chunk]
                out[layer, s] = logits[t] - torch.logsumexp(logits, 0) - base
        return out
