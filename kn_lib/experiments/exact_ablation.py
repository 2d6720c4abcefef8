"""Exact ablation: the ground truth an attribution method is judged by (the faithfulness benchmark).

For a prompt with answer w and a set S of FFN neurons, the exact effect of zeroing S at the answer
position is

    Delta(S) = log p(w | a_S = 0) - log p(w),

computed by forward passes, not estimated. A neuron whose removal lowers log p(w) most matters most. Each
batch row zeroes its own set, so one pass measures many sets; for a causal LM the prompt's prefix runs once
and its key/value cache serves every row (zeroing the last position changes nothing before it), so each
row computes one token.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..adapters import EncodedPrompt, ModelAdapter
from ..refine import Neuron

ROWS_PER_PASS = 256


@torch.no_grad()
def ablated_log_probs(adapter: ModelAdapter, prompt: EncodedPrompt, sets: Sequence[Sequence[Neuron]],
                      rows_per_pass: int = ROWS_PER_PASS) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(answer) [len(sets)] and whether the top-1 token is the answer [len(sets)] with each set's
    neurons zeroed at the answer position (an empty set: the unchanged model)."""
    from ..attribution_batched import _Batch

    batch = _Batch(adapter, [prompt])
    log_p = torch.empty(len(sets), dtype=torch.float64)
    top1 = torch.empty(len(sets), dtype=torch.bool)
    for start in range(0, len(sets), rows_per_pass):
        chunk = sets[start : start + rows_per_pass]
        masks = _layer_masks(chunk, adapter.n_layers, adapter.n_neurons, adapter.device)
        hooks = [adapter.projections[layer].register_forward_pre_hook(_zeroing(mask, int(batch.pos[0])))
                 for layer, mask in masks.items()]
        try:
            rows = torch.zeros(len(chunk), dtype=torch.long)
            logits = batch.logits(adapter.model(**batch.forward_kwargs(rows)), rows).float()
        finally:
            for h in hooks:
                h.remove()
        logs = logits.log_softmax(-1)
        log_p[start : start + len(chunk)] = logs[:, prompt.target_id].double().cpu()
        top1[start : start + len(chunk)] = (logs.argmax(-1) == prompt.target_id).cpu()
    return log_p, top1


def _layer_masks(sets: Sequence[Sequence[Neuron]], n_layers: int, n_neurons: int, device) -> dict[int, torch.Tensor]:
    """{layer: bool [rows, n_neurons]}, True where a row zeroes that neuron; layers no set touches are left out."""
    masks: dict[int, torch.Tensor] = {}
    for row, neurons in enumerate(sets):
        for layer, index in neurons:
            if not 0 <= layer < n_layers or not 0 <= index < n_neurons:
                raise ValueError(f"neuron ({layer}, {index}) outside the model's {n_layers} x {n_neurons}")
            if layer not in masks:
                masks[layer] = torch.zeros(len(sets), n_neurons, dtype=torch.bool)
            masks[layer][row, index] = True
    return {layer: mask.to(device) for layer, mask in masks.items()}


def _zeroing(mask: torch.Tensor, pos: int):
    def hook(module, args):
        patched = args[0].clone()
        patched[:, pos] = patched[:, pos].masked_fill(mask, 0.0)
        return (patched, *args[1:])

    return hook


def single_neuron_effects(adapter: ModelAdapter, prompt: EncodedPrompt, neurons: Sequence[Neuron],
                          rows_per_pass: int = ROWS_PER_PASS) -> tuple[float, bool, torch.Tensor, torch.Tensor]:
    """(log p, top-1 correct) of the unchanged prompt, and for each neuron zeroed alone Delta (the change of
    log p(answer)) [n] and whether the answer stays top-1 [n]."""
    log_p, top1 = ablated_log_probs(adapter, prompt, [[]] + [[n] for n in neurons], rows_per_pass)
    return float(log_p[0]), bool(top1[0]), log_p[1:] - log_p[0], top1[1:]
