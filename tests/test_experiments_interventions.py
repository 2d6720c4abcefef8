"""Mechanics of acting on neurons, on tiny random models of both families: activation hooks, value
slots, the update equation, and exact restore."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kn_lib.experiments.interventions import (
    edited_value_slots,
    erased_value_slots,
    scaled_activations,
    updated_value_slots,
    value_slot,
)
from kn_lib.experiments.evaluation import answer_distribution
from real_model import single_thread  # noqa: F401 (autouse fixture: one torch thread)


def _prompt(adapter):
    return adapter.encode("[X] was born in [Y] .", "alice", "paris")


def _capture(adapter, layer):
    """Records the FFN output projection's input ([seq, n_neurons]) and output ([seq, hidden])."""
    seen = {}
    proj = adapter.projections[layer]
    handles = [
        proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("act", args[0][0].detach().clone())),
        proj.register_forward_hook(lambda m, args, out: seen.__setitem__("out", out[0].detach().clone())),
    ]
    return seen, handles


@pytest.mark.parametrize("projection", [nn.Linear(48, 32), Conv1D(32, 48)])
def test_value_slot_is_what_the_neuron_writes(projection):
    """FFN(x) = act @ V: neuron i with activation 1 (others 0) adds exactly value_slot(i) to the bias."""
    with torch.no_grad():
        for i in (0, 7, 47):
            one_hot = torch.zeros(1, 48)
            one_hot[0, i] = 1.0
            written = projection(one_hot)[0] - projection(torch.zeros(1, 48))[0]
            torch.testing.assert_close(written, value_slot(projection, i), rtol=0, atol=1e-6)


def test_scaling_touches_the_answer_position_and_the_chosen_neurons_only(tiny):
    prompt = _prompt(tiny)
    layer, neurons = 1, [(1, 3), (1, 10), (2, 5)]
    seen, handles = _capture(tiny, layer)
    try:
        answer_distribution(tiny, prompt)
        original = seen["act"]
        with scaled_activations(tiny, neurons, prompt.answer_pos, 2.0):
            seen_handles = _capture(tiny, layer)  # registered after the patch: sees the patched input
            answer_distribution(tiny, prompt)
            doubled = seen_handles[0]["act"]
            for h in seen_handles[1]:
                h.remove()
    finally:
        for h in handles:
            h.remove()
    expected = original.clone()
    expected[prompt.answer_pos, [3, 10]] *= 2
    assert torch.equal(doubled, expected)  # exactly: other positions and neurons untouched


def test_zeroing_through_the_hook_equals_zeroing_the_value_slot(tiny):
    """At the answer position, suppressing neuron i's activation and zeroing its value slot write the
    same FFN output; for a last-layer neuron the whole prediction is the same (no later layer sees
    the other positions, where only the weight edit acts)."""
    prompt = _prompt(tiny)
    last = tiny.n_layers - 1
    for neurons, layer in (([(1, 4), (1, 20)], 1), ([(last, 9)], last)):
        seen, handles = _capture(tiny, layer)
        try:
            with scaled_activations(tiny, neurons, prompt.answer_pos, 0.0):
                hooked = answer_distribution(tiny, prompt)
            hooked_out = seen["out"][prompt.answer_pos]
            with edited_value_slots(tiny, erased_value_slots(tiny, neurons)):
                edited = answer_distribution(tiny, prompt)
            edited_out = seen["out"][prompt.answer_pos]
        finally:
            for h in handles:
                h.remove()
        torch.testing.assert_close(hooked_out, edited_out, rtol=0, atol=1e-6)
        if layer == last:
            torch.testing.assert_close(hooked, edited, rtol=0, atol=1e-7)


def _weights(adapter):
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def test_edit_then_restore_is_bit_identical_even_on_error(tiny):
    before = _weights(tiny)
    neurons = [(0, 1), (2, 7), (2, 40)]
    old_id, new_id = tiny.answer_token("paris"), tiny.answer_token("rome")
    slots = updated_value_slots(tiny, neurons, old_id, new_id)
    with edited_value_slots(tiny, slots):
        for (layer, index), slot in slots.items():
            assert torch.equal(value_slot(tiny.projections[layer], index), slot)
        assert not all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"):
        with edited_value_slots(tiny, erased_value_slots(tiny, neurons)):
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())


def test_update_equation_with_slot_norm_scaling(tiny):
    """v' = v - l1 (|v| / |t|) t + l2 (|v| / |t'|) t' (section 5.1, scaled as the official script)."""
    emb = tiny.model.get_input_embeddings().weight
    old_id, new_id = tiny.answer_token("paris"), tiny.answer_token("rome")
    t, t_new = emb[old_id].detach(), emb[new_id].detach()
    neuron = (1, 5)
    v = value_slot(tiny.projections[1], 5).detach().clone()
    got = updated_value_slots(tiny, [neuron], old_id, new_id, lambda1=1.0, lambda2=8.0)[neuron]
    expected = v - v.norm() / t.norm() * t + 8 * v.norm() / t_new.norm() * t_new
    torch.testing.assert_close(got, expected)
    assert torch.equal(updated_value_slots(tiny, [neuron], old_id, new_id, 0.0, 0.0)[neuron], v)
    # lambda2 alone: the slot gains exactly 8 slot-lengths along t'
    diff = updated_value_slots(tiny, [neuron], old_id, new_id, 0.0, 8.0)[neuron] - v
    torch.testing.assert_close(diff.norm(), 8 * v.norm(), rtol=1e-5, atol=0)


def test_edit_rejects_a_slot_of_the_wrong_shape(tiny):
    before = _weights(tiny)
    with pytest.raises(ValueError, match="shape"):
        with edited_value_slots(tiny, {(0, 1): torch.zeros(3)}):
            pass
    assert all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())


def test_signs_flip_the_update(tiny):
    old_id, new_id = tiny.answer_token("paris"), tiny.answer_token("rome")
    neurons = [(1, 5), (2, 6)]
    v = {n: value_slot(tiny.projections[n[0]], n[1]).detach().clone() for n in neurons}
    plain = updated_value_slots(tiny, neurons, old_id, new_id)
    signed = updated_value_slots(tiny, neurons, old_id, new_id, signs={(1, 5): 1.0, (2, 6): -1.0})
    assert torch.equal(signed[(1, 5)], plain[(1, 5)])
    torch.testing.assert_close(signed[(2, 6)] - v[(2, 6)], -(plain[(2, 6)] - v[(2, 6)]))
