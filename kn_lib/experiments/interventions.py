"""Two ways to act on knowledge neurons, both undone exactly on exit.

* On activations (section 4.5): scale chosen neurons' FFN intermediate activation at the answer
  position only, through ``ModelAdapter.patch`` hooks; the weights are untouched.
* On weights (sections 5.1, 5.2): overwrite chosen neurons' *value slots*, the columns of the FFN output
  projection that each neuron's activation multiplies (``FFN(x) = f(x K^T) V``: neuron i writes
  ``activation_i * V[i]`` into the residual stream). The original slots are copied before the edit and
  copied back afterwards, so the model returns bit-identical, even when the body raises.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..adapters import ModelAdapter
from ..refine import Neuron


def by_layer(neurons: Iterable[Neuron]) -> dict[int, list[int]]:
    """{layer: sorted neuron indices}."""
    out: dict[int, set[int]] = defaultdict(set)
    for layer, index in neurons:
        out[int(layer)].add(int(index))
    return {layer: sorted(ids) for layer, ids in sorted(out.items())}


@contextlib.contextmanager
def scaled_activations(adapter: ModelAdapter, neurons: Iterable[Neuron], pos: int,
                       factor: float | Sequence[float]) -> Iterator[None]:
    """Multiply the neurons' activations at position ``pos`` by ``factor`` (section 4.5: 0 suppresses,
    2 amplifies). ``factor=0`` writes exact zeros (not ``-0.0`` or ``nan * 0``). A sequence of factors
    scales each row of the batch by its own (one forward pass for "before", "suppressed", "amplified")."""
    per_row = not isinstance(factor, (int, float))
    factors = torch.tensor(list(factor) if per_row else [factor], dtype=torch.float32, device=adapter.device)
    with contextlib.ExitStack() as stack:
        for layer, indices in by_layer(neurons).items():
            index = torch.tensor(indices, device=adapter.device)

            def scale(act: torch.Tensor, index: torch.Tensor = index) -> torch.Tensor:  # act: [batch, n_neurons]
                if per_row and act.shape[0] != len(factors):
                    raise ValueError(f"{len(factors)} factors for a batch of {act.shape[0]}")
                out = act.clone()
                f = factors.to(act.dtype)[:, None]
                out[:, index] = torch.where(f == 0, torch.zeros_like(out[:, index]), out[:, index] * f)
                return out

            stack.enter_context(adapter.patch(layer, pos, scale))
        yield


def value_slot(projection: nn.Module, index: int) -> torch.Tensor:
    """A writable view of neuron ``index``'s value slot [hidden] in an FFN output projection:
    ``weight[:, index]`` for ``nn.Linear`` (weight [out, in]), ``weight[index]`` for GPT-2's Conv1D
    (weight [in, out])."""
    weight = projection.weight
    return weight[:, index] if isinstance(projection, nn.Linear) else weight[index]


def value_slots(adapter: ModelAdapter, neurons: Iterable[Neuron]) -> dict[Neuron, torch.Tensor]:
    """Copies of the neurons' current value slots."""
    return {n: value_slot(adapter.projections[n[0]], n[1]).detach().clone() for n in neurons}


@contextlib.contextmanager
def edited_value_slots(adapter: ModelAdapter, new_slots: Mapping[Neuron, torch.Tensor]) -> Iterator[None]:
    """Write ``new_slots`` into the model for the duration of the block, then restore the saved
    originals bit for bit (restored by copy, not by undoing the arithmetic)."""
    saved = value_slots(adapter, new_slots)  # every original is saved before anything is written
    try:
        with torch.no_grad():
            for (layer, index), slot in new_slots.items():
                target = value_slot(adapter.projections[layer], index)
                if slot.shape != target.shape:
                    raise ValueError(f"value slot ({layer}, {index}) has shape {tuple(target.shape)}, got {tuple(slot.shape)}")
                target.copy_(slot)
        yield
    finally:
        with torch.no_grad():
            for (layer, index), slot in saved.items():
                value_slot(adapter.projections[layer], index).copy_(slot)


def erased_value_slots(adapter: ModelAdapter, neurons: Iterable[Neuron]) -> dict[Neuron, torch.Tensor]:
    """Section 5.2, erasing a relation: FFN^(val)_i = 0 (the zero vector) for each chosen neuron i."""
    return {n: torch.zeros_like(slot) for n, slot in value_slots(adapter, neurons).items()}


def updated_value_slots(
    adapter: ModelAdapter,
    neurons: Iterable[Neuron],
    old_id: int,
    new_id: int,
    lambda1: float = 1.0,
    lambda2: float = 8.0,
    signs: Mapping[Neuron, float] | None = None,
) -> dict[Neuron, torch.Tensor]:
    r"""Section 5.1, updating a fact <h, r, t> to <h, r, t'>:

        FFN^(val)_i  <-  FFN^(val)_i - \lambda_1 t + \lambda_2 t',      \lambda_1 = 1, \lambda_2 = 8,

    with t, t' the word embeddings of the old and new answers. Scaling: as in the official script
    (``6_edit_knowledge_sampled.py``), each embedding is first rescaled to the norm of the value slot
    it edits, i.e. t -> (||v_i|| / ||t||) t and t' -> (||v_i|| / ||t'||) t'. The raw formula mixes two
    unrelated scales (embedding norms and value-slot norms differ by model, and by layer), so the same
    lambdas would mean different edits in different models; rescaled, lambda_1 = 1 removes as much
    as the slot's own length in the direction of t, and lambda_2 = 8 writes eight slot lengths of t'.
    The embeddings are the model's input embeddings (tied to the output ones in SmolLM2 and BERT).

    ``signs`` (an option, not in the paper): neuron -> +1 or -1, multiplying that neuron's change. The
    paper's edit assumes the neuron fires positively on the fact's prompts (true of BERT's GELU
    neurons that matter); a gated (SwiGLU) FFN's activation can be strongly negative, and then
    ``activation * (v - t + 8 t')`` moves the output *away* from t'. Passing the sign of the neuron's
    activation on the edited prompt makes the edit push towards t' either way.
    """
    embeddings = adapter.model.get_input_embeddings().weight.detach()
    old, new = embeddings[old_id].clone(), embeddings[new_id].clone()
    out = {}
    for neuron, slot in value_slots(adapter, neurons).items():
        if slot.shape != old.shape:
            raise ValueError(f"value slots have {slot.shape[0]} dimensions but word embeddings {old.shape[0]}: cannot edit")
        norm, sign = slot.norm(), 1.0 if signs is None else float(signs[neuron])
        out[neuron] = slot + sign * (-lambda1 * (norm / old.norm()) * old + lambda2 * (norm / new.norm()) * new)
    return out
