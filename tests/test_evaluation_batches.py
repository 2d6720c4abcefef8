"""Batched answer distributions (kn_lib.experiments.evaluation): the same numbers as one prompt at a time, and
the readouts the experiments keep are exactly those distributions reduced."""

import pytest
import torch

from kn_lib.experiments.evaluation import answer_log_batches, answer_log_distribution, answer_readouts

PROMPTS = [("[X] was born in [Y] .", "alice", "paris"), ("[X] lives in [Y] .", "bob", "london"),
           ("[X] was born in [Y] .", "carol", "london"), ("the capital of [X] is [Y] .", "england", "london")]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_bert"])
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_batches_match_one_at_a_time_and_readouts_reduce_them(request, fixture, batch_size):
    adapter = request.getfixturevalue(fixture)
    encoded = [adapter.encode(*p) for p in PROMPTS]
    logs = [None] * len(encoded)
    for chunk, rows in answer_log_batches(adapter, encoded, batch_size):
        for i, row in zip(chunk, rows):
            logs[i] = row
    for prompt, row in zip(encoded, logs):
        assert torch.allclose(row, answer_log_distribution(adapter, prompt), atol=1e-5)
    reads = answer_readouts(adapter, encoded, batch_size=batch_size)
    for prompt, row, read in zip(encoded, logs, reads):  # the very same floats, not merely close
        assert (read.p, read.log_p, read.top1) == (float(row[prompt.target_id].exp()), float(row[prompt.target_id]),
                                                   int(row.argmax()))
    other = [int(row.argmin()) for row in logs]  # any token: the symmetric edits read the reverse answer
    assert [r.log_p for r in answer_readouts(adapter, encoded, other, batch_size)] == \
        [float(row[t]) for row, t in zip(logs, other)]


def test_readouts_refuse_bad_input(tiny_llama):
    encoded = [tiny_llama.encode(*PROMPTS[0])]
    with pytest.raises(ValueError, match="2 targets for 1 prompts"):
        answer_readouts(tiny_llama, encoded, [1, 2])
    with pytest.raises(ValueError, match="batch_size"):
        answer_readouts(tiny_llama, encoded, batch_size=0)


def test_no_autograd_graph_is_built(tiny_llama):
    """Even with weights that require gradients, the evaluations build no graph (memory, speed)."""
    params = list(tiny_llama.model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        encoded = [tiny_llama.encode(*PROMPTS[0])]
        assert not any(logs.requires_grad for _, logs in answer_log_batches(tiny_llama, encoded, 4))
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
