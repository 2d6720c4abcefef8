"""Integrated gradients over FFN neurons: completeness, an independent implementation (captum), and the
fast path against the reference, on tiny random models of both families."""

import pytest
import torch

from kn_lib.adapters import EncodedPrompt
from kn_lib.attribution import (
    IGConfig,
    activation_attribution,
    integrated_gradients,
    riemann_alphas,
    scaled_probability,
)

TEMPLATE, SUBJECT, OBJECT = "[X] was born in [Y] .", "alice", "paris"


@pytest.fixture
def prompt(tiny):
    return tiny.encode(TEMPLATE, SUBJECT, OBJECT)


def test_riemann_alphas_paper_and_official_rules():
    assert riemann_alphas(4, "right").tolist() == [0.25, 0.5, 0.75, 1.0]  # paper: k/m, k = 1..m
    assert riemann_alphas(4, "left").tolist() == [0.0, 0.25, 0.5, 0.75]  # official scripts: k = 0..m-1


@pytest.mark.parametrize("bad", [dict(steps=0), dict(rule="middle"), dict(method="magic"), dict(batch_rows=0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        IGConfig(**bad)


def _completeness_gaps(adapter, prompt, steps):
    ig = integrated_gradients(adapter, prompt, config=IGConfig(steps=steps))
    gaps, deltas = [], []
    for layer in range(adapter.n_layers):
        delta = scaled_probability(adapter, prompt, layer, 1.0) - scaled_probability(adapter, prompt, layer, 0.0)
        gaps.append(abs(ig[layer].double().sum().item() - delta))
        deltas.append(abs(delta))
    return torch.tensor(gaps), torch.tensor(deltas)


def test_completeness_within_a_riemann_error_that_shrinks_with_m(tiny, prompt):
    """Per layer: sum_i Attr_i = p(full) - p(layer zeroed at the answer position), up to the Riemann error.

    The model runs in float64, but the scores come back in float32: on a tiny random model the
    Riemann error can be ~1e-8 (tiny BERT: p(answer) ~1e-5), below what float32 sums resolve, so
    "shrinks with m" is only asserted where the m=20 gap is above that floor (tiny LLaMA)."""
    import copy

    from kn_lib.models import adapter_for

    exact = adapter_for(copy.deepcopy(tiny.model).double(), tiny.tokenizer, "tiny-float64")
    gaps20, deltas = _completeness_gaps(exact, prompt, 20)
    gaps200, _ = _completeness_gaps(exact, prompt, 200)
    assert (deltas > 0).all()  # the check is not vacuous: every layer moves the probability
    assert (gaps20 <= 0.05 * deltas + 1e-9).all()
    floor = 1e-7  # the scores come back in float32: below this the sums cannot resolve a Riemann error
    print(f"{tiny.name}: m=20 gaps {gaps20.tolist()}, m=200 gaps {gaps200.tolist()}, deltas {deltas.tolist()}")
    assert gaps200.sum() < gaps20.sum() or gaps20.max() < floor


def test_captum_integrated_gradients_agrees(tiny, prompt):
    """The same function handed to captum's IntegratedGradients (riemann_right = the paper's sum)."""
    from captum.attr import IntegratedGradients

    layer = 1
    ids = prompt.input_ids[None]
    acts = tiny.activations(prompt)

    def p_answer(w):  # w: [batch, n_neurons] -> p(answer) [batch]
        with tiny.patch(layer, prompt.answer_pos, lambda _: w):
            logits = tiny.logits_at(ids.expand(len(w), -1), prompt.answer_pos)
        return logits.softmax(-1)[:, prompt.target_id]

    for rule, captum_method in (("right", "riemann_right"), ("left", "riemann_left")):
        theirs = IntegratedGradients(p_answer).attribute(
            acts[layer][None].double().float(), baselines=0.0, n_steps=20, method=captum_method
        )[0]
        ours = integrated_gradients(tiny, prompt, layers=[layer], config=IGConfig(rule=rule))[0]
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("method", ["fast", "packed"])
@pytest.mark.parametrize("batch_rows", [1, 7, 20, 60, 1000])
def test_fast_path_matches_reference(tiny, prompt, batch_rows, method):
    ref = integrated_gradients(tiny, prompt, config=IGConfig(method="reference", batch_rows=20))
    fast = integrated_gradients(tiny, prompt, config=IGConfig(method=method, batch_rows=batch_rows))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("rule, steps", [("gauss-legendre", 64), ("left", 33)])
def test_fast_path_matches_reference_for_other_rules_and_many_passes(tiny, prompt, rule, steps):
    """Every quadrature rule, with more (prompt, step) units than one pass holds: the nodes and weights of
    each unit stay paired across passes."""
    ref = integrated_gradients(tiny, prompt, config=IGConfig(method="reference", steps=steps, rule=rule, batch_rows=20))
    fast = integrated_gradients(tiny, prompt, config=IGConfig(steps=steps, rule=rule, batch_rows=7))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def _rows_per_layer(adapter, run) -> list[list[int]]:
    """Per layer: the batch rows seen by every linear map of the block, one list entry per block call
    (all linear maps of one call must agree), while ``run()`` runs."""
    seen: list[list[int]] = [[] for _ in adapter.blocks]
    calls: list[list[set[int]]] = [[] for _ in adapter.blocks]
    handles = []
    for layer, block in enumerate(adapter.blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, layer=layer: calls[layer].append(set())))
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):
                handles.append(module.register_forward_pre_hook(lambda m, a, layer=layer: calls[layer][-1].add(a[0].shape[0])))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    for layer, per_call in enumerate(calls):
        for rows in per_call:
            assert len(rows) <= 1, f"layer {layer}: linear maps of one block call saw different row counts {rows}"
            if rows:
                seen[layer].append(rows.pop())
    return seen


@pytest.mark.parametrize("layers", [[2, 0], [1], [0, 1, 2]])
def test_fast_path_rows_join_at_their_own_layer(tiny, layers):
    """No row computes a layer below its scaled layer: block l runs on exactly the rows scaled at l or
    below (one per prompt, step and such layer), and blocks below every scaled layer do not run."""
    from kn_lib.attribution import integrated_gradients_many

    prompts = [tiny.encode(TEMPLATE, SUBJECT, OBJECT), tiny.encode("the capital of [X] is the city of [Y] .", "france", "paris")]
    steps, units_per_pass = 5, 4  # 2 prompts x 5 steps = 10 (prompt, step) units: passes of 4, 4 and 2
    tokens_per_row = 1 if tiny.family == "causal" else max(len(p.input_ids) for p in prompts)  # masked LMs: whole sequences
    config = IGConfig(steps=steps, batch_rows=units_per_pass * tokens_per_row)
    seen = _rows_per_layer(tiny, lambda: integrated_gradients_many(tiny, prompts, layers, config))
    # before the passes, unscaled runs of at most one row per prompt go through every block (activations,
    # the causal prefix cache, recorded block inputs); the top block also sees the 3 passes
    n_unscaled = len(seen[-1]) - 3
    for layer in range(tiny.n_layers):
        scaled_here_or_below = sum(1 for l in layers if l <= layer)
        grown = [units * scaled_here_or_below for units in (4, 4, 2)] if scaled_here_or_below else []
        assert len(seen[layer]) == n_unscaled + len(grown) and max(seen[layer][:n_unscaled]) <= len(prompts)
        assert seen[layer][n_unscaled:] == grown, f"layer {layer}: rows {seen[layer]}"


def test_fast_path_does_fewer_flops_than_packed(tiny, prompt):
    """The packed path starts every row of a pass at the pass's lowest scaled layer; the fast one does not."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for method in ("fast", "packed"):
        counter = FlopCounterMode(display=False)
        with counter:
            integrated_gradients(tiny, prompt, config=IGConfig(method=method, batch_rows=60))
        flops[method] = counter.get_total_flops()
    assert flops["fast"] < flops["packed"]


@pytest.mark.parametrize("length", [1, 2, 5, 17])
def test_fast_path_matches_reference_across_prompt_lengths(tiny_llama, length):
    """Length 1 has no prefix to cache; longer prompts reuse the prefix's key/value cache."""
    ids = torch.randint(5, 30, (length,), generator=torch.Generator().manual_seed(length))
    prompt = EncodedPrompt(ids, length - 1, tiny_llama.answer_token("paris"), "")
    ref = integrated_gradients(tiny_llama, prompt, layers=[2, 0], config=IGConfig(method="reference"))
    for method in ("fast", "packed"):
        fast = integrated_gradients(tiny_llama, prompt, layers=[2, 0], config=IGConfig(method=method, batch_rows=30))
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_layer_subset_and_order(tiny, prompt):
    full = integrated_gradients(tiny, prompt)
    part = integrated_gradients(tiny, prompt, layers=[2, 0])
    torch.testing.assert_close(part, full[[2, 0]])


def test_baseline_is_the_raw_activation(tiny, prompt):
    acts = activation_attribution(tiny, prompt)
    assert acts.shape == (tiny.n_layers, tiny.n_neurons)
    torch.testing.assert_close(activation_attribution(tiny, prompt, layers=[1])[0], acts[1])


def test_attribution_does_not_leave_hooks_or_change_the_model(tiny, prompt):
    before = tiny.answer_probability(prompt)
    integrated_gradients(tiny, prompt)
    assert all(not p._forward_pre_hooks for p in tiny.projections)
    assert tiny.answer_probability(prompt) == before


def test_quadrature_weights_and_exactness():
    from kn_lib.attribution import quadrature

    for rule in ("right", "left", "gauss-legendre"):
        nodes, weights = quadrature(7, rule)
        assert len(nodes) == 7 and abs(weights.sum().item() - 1) < 1e-12 and ((nodes >= 0) & (nodes <= 1)).all()
    nodes, weights = quadrature(3, "gauss-legendre")  # exact for polynomials of degree <= 5
    assert abs((weights * nodes**5).sum().item() - 1 / 6) < 1e-12


def test_gauss_legendre_with_few_nodes_beats_the_riemann_sum(tiny, prompt):
    exact = integrated_gradients(tiny, prompt, config=IGConfig(steps=400, rule="gauss-legendre")).double()
    riemann20 = integrated_gradients(tiny, prompt, config=IGConfig(steps=20)).double()
    gauss6 = integrated_gradients(tiny, prompt, config=IGConfig(steps=6, rule="gauss-legendre")).double()
    assert (gauss6 - exact).abs().max() < (riemann20 - exact).abs().max()


def test_bfloat16_option_is_close_and_same_for_both_paths(tiny, prompt):
    fp32 = integrated_gradients(tiny, prompt)
    for method in ("fast", "packed", "reference"):
        bf16 = integrated_gradients(tiny, prompt, config=IGConfig(precision="bfloat16", method=method))
        assert bf16.dtype == torch.float32
        assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()


@pytest.mark.parametrize("method", ["fast", "packed"])
@pytest.mark.parametrize("batch_rows", [13, 60, 400])
def test_many_prompts_in_one_padded_batch_match_one_at_a_time(tiny, batch_rows, method):
    """Prompts of different lengths (left-padded prefixes for causal LMs, right-padded for MLMs)."""
    from kn_lib.attribution import integrated_gradients_many

    prompts = [
        tiny.encode("[X] was born in [Y] .", "alice", "paris"),
        tiny.encode("the capital of [X] is the city of [Y] .", "france", "paris"),
        tiny.encode("[X] [Y]", "bob", "rome"),
    ]
    if tiny.family == "causal":
        prompts.append(EncodedPrompt(torch.tensor([7]), 0, tiny.answer_token("rome"), ""))  # no prefix at all
    together = integrated_gradients_many(tiny, prompts, config=IGConfig(method=method, batch_rows=batch_rows))
    for prompt, scores in zip(prompts, together):
        alone = integrated_gradients(tiny, prompt, config=IGConfig(method="reference"))
        torch.testing.assert_close(scores, alone, rtol=1e-4, atol=1e-4 * alone.abs().max().item())


def test_completeness_and_convergence_tables(tiny, prompt):
    from kn_lib.attribution import completeness_table, convergence_table

    scores = integrated_gradients(tiny, prompt, layers=[2, 0])
    table = completeness_table(tiny, prompt, scores, layers=[2, 0])
    assert table["layer"].tolist() == [2, 0]
    assert (table["gap"].abs() <= 0.05 * table["delta_p"].abs() + 1e-9).all()
    conv = convergence_table(tiny, prompt, [1], [5, 50])
    gaps = conv.set_index(["rule", "steps"])["gap"].abs()
    assert gaps["right", 50] < gaps["right", 5] and gaps["left", 50] < gaps["left", 5]
