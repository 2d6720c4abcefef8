"""The faithfulness benchmark (``experiments.faithfulness``, ``attribution_methods``, ``exact_ablation``) on
tiny random models: exact ablation finds a planted neuron first; gradient x activation is IG with one
right-sum step and the gradient an independent autograd pass gives; the left sum from the right one equals
the left sum computed directly; Yu & Ananiadou's score equals its definition evaluated neuron by neuron
through the model's own norm and head; set ablation equals separate patched passes; the ``kn
faithfulness`` stage accounts for every fact, and a run killed after one shard resumes to the rows of an
uninterrupted run."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MIRROR, run_kn
from kn_lib.attribution import IGConfig, integrated_gradients
from kn_lib.experiments.attribution_methods import LogprobIncrease, grad_x_activation, left_from_right
from kn_lib.experiments.exact_ablation import ablated_log_probs, single_neuron_effects
from kn_lib.experiments.controls import layer_matched_neurons
from kn_lib.experiments.faithfulness import curve_area, recall_at_k, spearman, top_neurons

os.environ.setdefault("KN_DATA_MIRROR", str(MIRROR))
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def prompt_of(adapter):
    return adapter.encode("[X] lives in [Y].", "alice", "paris")


def test_exact_ablation_finds_a_planted_neuron_first(tiny_llama):
    adapter = copy.deepcopy(tiny_llama)
    prompt = prompt_of(adapter)
    acts = adapter.activations(prompt)
    layer = adapter.n_layers - 1
    planted = int(acts[layer].abs().argmax())
    # its value slot now pushes the answer's unembedding hard: removing it must hurt the answer most
    direction = adapter.model.get_output_embeddings().weight[prompt.target_id]
    with torch.no_grad():
        adapter.projections[layer].weight[:, planted] = 20 * direction / acts[layer, planted] / direction.norm()
    neurons = [(l, i) for l in range(adapter.n_layers) for i in range(adapter.n_neurons)]
    log_p, _, delta, _ = single_neuron_effects(adapter, prompt, neurons, rows_per_pass=50)
    assert neurons[int(delta.argmin())] == (layer, planted)
    second = delta.sort().values[1]
    assert delta.min() < -0.3 and delta.min() < 3 * second  # first by a wide margin


def test_set_ablation_equals_separate_patched_passes(tiny):
    prompt = prompt_of(tiny) if tiny.family == "causal" else tiny.encode("[X] lives in [Y].", "alice", "paris")
    sets = [[], [(0, 3)], [(1, 5), (2, 7), (2, 8)], [(0, 1), (2, 40)]]
    got, top1 = ablated_log_probs(tiny, prompt, sets, rows_per_pass=3)  # two passes
    for neurons, lp, t in zip(sets, got.tolist(), top1.tolist()):
        with torch.no_grad(), _zeroed(tiny, prompt, neurons):
            logits = tiny.logits_at(prompt.input_ids[None], prompt.answer_pos).float()[0]
        assert lp == pytest.approx(float(logits.log_softmax(-1)[prompt.target_id]), rel=1e-5, abs=1e-6)
        assert t == (int(logits.argmax()) == prompt.target_id)
    assert got[2] != got[0]  # the sets do change the answer's probability


class _zeroed:
    """Independent zeroing: one ``adapter.patch`` per layer."""

    def __init__(self, adapter, prompt, neurons):
        import contextlib

        self.stack = contextlib.ExitStack()
        for layer in sorted({l for l, _ in neurons}):
            index = [i for l, i in neurons if l == layer]

            def fn(a, index=index):
                a = a.clone()
                a[:, index] = 0
                return a

            self.stack.enter_context(adapter.patch(layer, prompt.answer_pos, fn))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stack.close()


def test_gradient_times_activation_is_ig_with_one_right_step_and_the_autograd_gradient(tiny):
    prompt = tiny.encode("[X] lives in [Y].", "alice", "paris")
    gxa = grad_x_activation(tiny, prompt)
    assert torch.equal(gxa, integrated_gradients(tiny, prompt, config=IGConfig(steps=1, rule="right")))
    acts = tiny.activations(prompt)
    for layer in range(tiny.n_layers):
        leaf = acts[layer][None].clone().requires_grad_(True)
        with tiny.patch(layer, prompt.answer_pos, lambda _: leaf):
            p = tiny.logits_at(prompt.input_ids[None], prompt.answer_pos).float().softmax(-1)[0, prompt.target_id]
        (grad,) = torch.autograd.grad(p, leaf)
        torch.testing.assert_close(gxa[layer], (acts[layer] * grad[0]).float(), rtol=1e-4, atol=1e-7)


def test_left_sum_from_the_right_sum_equals_the_left_sum(tiny):
    prompt = tiny.encode("[X] lives in [Y].", "alice", "paris")
    right = integrated_gradients(tiny, prompt, config=IGConfig(steps=7, rule="right"))
    at_zero = integrated_gradients(tiny, prompt, config=IGConfig(steps=1, rule="left"))
    left = left_from_right(right, grad_x_activation(tiny, prompt), at_zero, 7)
    torch.testing.assert_close(left, integrated_gradients(tiny, prompt, config=IGConfig(steps=7, rule="left")), rtol=1e-4, atol=1e-7)


def test_logprob_increase_equals_its_definition_neuron_by_neuron(tiny_llama):
    adapter, prompt = tiny_llama, prompt_of(tiny_llama)
    scores = LogprobIncrease(adapter, chunk=17).scores(prompt)
    hidden, acts, _ = adapter.record(torch.tensor([prompt.answer_pos]), input_ids=prompt.input_ids[None])
    norm, t = adapter.model.base_model.norm, prompt.target_id

    def log_p(x):
        return float(adapter.head(norm(x[None]))[0].float().log_softmax(-1)[t])

    for layer in range(adapter.n_layers):
        h = hidden[layer][0, prompt.answer_pos]
        values = adapter.projections[layer].weight
        for i in (0, 5, int(acts[0, layer].abs().argmax())):
            expected = log_p(h + acts[0, layer, i] * values[:, i]) - log_p(h)
            assert float(scores[layer, i]) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_logprob_increase_refuses_a_block_with_a_post_ffn_norm(tiny_llama):
    adapter = copy.deepcopy(tiny_llama)
    adapter.blocks[0].post_feedforward_layernorm = torch.nn.Identity()
    with pytest.raises(NotImplementedError, match="post-FFN norm"):
        LogprobIncrease(adapter)


def test_metric_helpers():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.9, 0.2, 0.0]])
    assert top_neurons(scores, 3) == [(0, 1), (1, 0), (0, 2)]  # tie at 0.9: the lower flat index first
    assert recall_at_k([(0, 1), (1, 1)], [(0, 1), (0, 2)]) == 0.5
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 45.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([1, 1, 1.0]), np.array([1, 2, 3.0])))
    assert curve_area([1, 10, 100], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert curve_area([1, 10, 100], [0.0, 1.0, 2.0]) == pytest.approx(1.0)
    import random

    picked = layer_matched_neurons([(0, 1), (2, 3)], 5, random.Random(0))  # the benchmark's same-layer random set
    assert [l for l, _ in picked] == [0, 2] and not set(picked) & {(0, 1), (2, 3)}


def _tables(root):
    from kn_lib.run import results

    return {t: results.load("tiny-random-llama", "faithfulness", t, preset="smoke", root=root) for t in ("curve", "ranks", "effects")}


def test_the_stage_accounts_for_every_fact_and_resumes_after_a_kill(tmp_path, capsys):
    common = ["--model", "tiny-random-llama", "--preset", "smoke", "--threads", "1", "--no-progress"]
    for root in (tmp_path / "killed", tmp_path / "clean"):
        assert run_kn(capsys, "run", *common, "--out", str(root))[0] == 0
    code, out, err = run_kn(capsys, "faithfulness", *common, "--out", str(tmp_path / "clean"))
    assert code == 0, err
    clean = _tables(tmp_path / "clean")
    from kn_lib.run import results

    skipped = results.load("tiny-random-llama", "faithfulness", "skipped", preset="smoke", root=tmp_path / "clean")
    done = set(clean["curve"]["fact_id"])
    whole = set(skipped[skipped["item"].isna() & (skipped["reason"] == "no prompt answered top-1")]["fact_id"])
    assert done and not done & whole and len(done | whole) == 4
    methods = set(clean["curve"]["method"])
    assert {"ig-m20", "grad-x-act", "exact", "random", "logprob-increase"} <= methods

    from kn_lib.run.registry import settings_for, stage_registry
    from kn_lib.run.result_store import ResultStore
    from kn_lib.run.store import cache_key

    settings = settings_for("tiny-random-llama", "smoke")
    store = ResultStore(tmp_path / "killed", "tiny-random-llama", "faithfulness", cache_key(stage_registry()["faithfulness"].key_settings(settings)))
    env = {**os.environ, "KN_TEST_SHARD_DELAY": "3", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kn_lib.run.cli", "faithfulness", *common, "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while len(store.entries() if store.exists() else {}) < 1:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert len(store.entries()) == 1
    code, out, _ = run_kn(capsys, "faithfulness", *common, "--out", str(tmp_path / "killed"))
    assert code == 0 and "(1 computed, 1 reused)" in out
    resumed = _tables(tmp_path / "killed")
    for name in clean:
        a = clean[name].drop(columns=["seconds"], errors="ignore").sort_values(list(clean[name].columns[:4])).reset_index(drop=True)
        b = resumed[name].drop(columns=["seconds"], errors="ignore").sort_values(list(clean[name].columns[:4])).reset_index(drop=True)
        assert a.equals(b), name
