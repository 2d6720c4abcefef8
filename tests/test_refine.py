"""Refinement on hand-made coarse sets with known answers, including the adaptive p edge cases, under the
official rule (2_get_kn.py, worked out by hand) and the paper text's rule."""

import pytest
import torch

from kn_lib.refine import (
    adaptive_share_threshold,
    coarse_neurons,
    neuron_shares,
    refine_fact,
    refine_relation,
)


def test_coarse_threshold_is_relative_to_the_prompt_maximum():
    scores = torch.tensor([[1.0, 0.2, 0.21], [0.0, -3.0, 0.5]])
    assert coarse_neurons(scores, 0.2) == {(0, 0), (0, 2), (1, 2)}  # 0.2 is not > 0.2 * 1.0
    assert coarse_neurons(scores, 0.6) == {(0, 0)}


def test_coarse_uses_given_layer_names():
    scores = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert coarse_neurons(scores, 0.2, layers=[7, 9]) == {(7, 1), (9, 0)}


def test_coarse_is_empty_when_no_score_is_positive():
    assert coarse_neurons(torch.tensor([[-1.0, 0.0]])) == set()
    assert coarse_neurons(torch.zeros(2, 3)) == set()


def test_refine_is_strictly_more_than_p():
    a, b, c = (0, 1), (1, 2), (2, 3)
    sets = [{a, b}] * 7 + [{a}] * 3  # a in 10/10, b in 7/10
    assert refine_fact(sets, 0.7, "paper") == {a}  # 7/10 is not more than 70%
    assert refine_fact(sets, 0.65, "paper") == {a, b}
    assert refine_fact(sets + [{c}], 0.0, "paper") == {a, b, c}  # p = 0: any coarse neuron
    assert refine_fact(sets, 1.0, "paper") == set()  # nothing is shared by more than 100%
    assert neuron_shares(sets) == {a: 1.0, b: 0.7}


def _facts(n_facts, shares):
    """Facts with 20 prompts each; neuron j appears in round(shares[j] * 20) of them."""
    facts = {}
    for f in range(n_facts):
        sets = [set() for _ in range(20)]
        for j, share in enumerate(shares):
            for i in range(round(share * 20)):
                sets[i].add((0, j))
        facts[f"P0/{f}"] = sets
    return facts


def test_adaptive_p_stays_at_start_when_in_range():
    res = adaptive_share_threshold(_facts(3, [0.9, 0.8, 0.75]), rule="paper")
    assert (res.p, res.mean_count, res.converged, res.reason) == (0.7, 3.0, True, "in range")


def test_adaptive_p_rises_when_too_many():
    shares = [1.0, 0.95, 0.9, 0.85, 0.8, 0.8, 0.8, 0.8]  # 8 neurons above 0.7 and 0.75, 4 above 0.8
    res = adaptive_share_threshold(_facts(2, shares), rule="paper")
    assert res.converged and res.p == 0.8 and res.mean_count == 4.0
    assert [p for p, _ in res.trace] == [0.7, 0.75, 0.8]


def test_adaptive_p_falls_when_too_few():
    res = adaptive_share_threshold(_facts(2, [1.0, 0.6, 0.55]), rule="paper")
    assert res.converged and res.p == 0.55 and res.mean_count == 2.0
    assert [p for p, _ in res.trace] == [0.7, 0.65, 0.6, 0.55]


def test_adaptive_p_overshoot_keeps_the_nearer_side():
    # at 0.7: 6 neurons (> 5); at 0.75: 1 neuron (< 2): the interval is jumped over
    res = adaptive_share_threshold(_facts(1, [1.0, 0.75, 0.75, 0.75, 0.75, 0.75]), rule="paper")
    assert not res.converged and res.reason == "overshoot"
    assert (res.p, res.mean_count) == (0.7, 6.0)  # |6-5| = 1 beats |1-2| = 1 on the tie: first one


def test_adaptive_p_reaches_one():
    res = adaptive_share_threshold(_facts(1, [1.0] * 8), start=0.9, rule="paper")
    # at p = 1.0 nothing is shared by more than all prompts: 0 < 2, overshoot from 8 to 0; the old search
    # kept p = 1.0 and no neuron at all (3 relations of the first committed SmolLM2 run); now the
    # non-empty side is kept
    assert [p for p, _ in res.trace] == [0.9, 0.95, 1.0]
    assert res.reason == "non-empty kept" and res.p == 0.95 and res.mean_count == 8.0


def test_adaptive_p_reaches_zero():
    res = adaptive_share_threshold(_facts(2, [0.05]), rule="paper")  # one neuron only: never 2
    assert not res.converged and res.reason == "p reached 0" and res.p == 0.0 and res.mean_count == 1.0


def test_adaptive_p_reaches_one_with_too_many():
    # the mean is 0 at p = 1, so with the paper's interval an upward search always stops by overshoot;
    # the bound is reached only when the interval lies below every reachable mean
    facts = {"P0/0": [{(0, j) for j in range(9)}] * 4, "P0/1": [set()] * 4}
    res = adaptive_share_threshold(facts, low=-1.0, high=-0.5, rule="paper")
    assert res.trace[-1] == (1.0, 0.0)  # the bound: the search stops at p = 1 ...
    assert res.reason == "non-empty kept" and res.p == 0.95 and res.mean_count == 4.5  # ... and keeps neurons


def test_no_usable_fact():
    res = adaptive_share_threshold({"P0/0": []})
    assert res.reason == "no facts" and not res.converged


def test_refine_relation_applies_the_chosen_p():
    facts = _facts(2, [1.0, 0.9, 0.8, 0.3])
    refined, chosen = refine_relation(facts, "paper")
    assert chosen.p == 0.7 and refined == {f: {(0, 0), (0, 1), (0, 2)} for f in facts}


def test_mean_excludes_facts_without_prompts():
    facts = _facts(2, [1.0, 0.9, 0.8])
    facts["P0/empty"] = []
    assert adaptive_share_threshold(facts, rule="paper").mean_count == 3.0


# -- the official rule (2_get_kn.py), answers worked out by hand ------------------------------------


def test_official_count_is_at_least_p_n_and_at_least_three():
    a, b, c = (0, 1), (1, 2), (2, 3)
    sets = [{a, b}] * 7 + [{a}] * 3  # a in 10/10, b in 7/10
    # 7 >= 0.7 * 10 = 7 keeps b (the paper's strict rule drops it)
    assert refine_fact(sets, 0.7) == {a, b}
    assert refine_fact(sets, 0.7, "paper") == {a}
    assert refine_fact(sets, 0.75) == {a}  # 7 < 7.5
    # n = 4 prompts, p = 0.5: p n = 2 but the floor is 3
    four = [{a, c}, {a, c}, {a}, {b}]
    assert refine_fact(four, 0.5) == set() | {a}  # a: 3 >= max(2, 3); c: 2 < 3
    assert refine_fact(four, 0.5, "paper") == {a}  # a: 3 > 2; c: 2 is not > 2
    assert refine_fact(four, 0.45, "paper") == {a, c}  # c: 2 > 1.8
    assert refine_fact(four, 0.45) == {a}  # the floor of 3 still drops c


def test_official_rule_gives_nothing_with_fewer_than_three_prompts():
    a = (0, 1)
    assert refine_fact([{a}, {a}], 0.5) == set()  # 2 < 3 however small p is
    assert refine_fact([{a}, {a}], 0.5, "paper") == {a}
    assert refine_fact([{a}, {a}], 0.5, min_count=2) == {a}


def test_official_search_stops_after_six_evaluations_and_keeps_the_last():
    # 20 prompts: one neuron in 20/20, none else: mean 1 < 2 at every p, so p falls 0.7 -> 0.45
    res = adaptive_share_threshold(_facts(2, [1.0]))
    assert [p for p, _ in res.trace] == pytest.approx([0.7, 0.65, 0.6, 0.55, 0.5, 0.45])
    assert (res.p, res.mean_count, res.converged, res.reason) == (pytest.approx(0.45), 1.0, False, "6 evaluations")
    # the paper's reading goes on to p = 0
    assert adaptive_share_threshold(_facts(2, [1.0]), rule="paper").p == 0.0


def test_official_search_oscillates_over_a_jumped_interval_and_keeps_the_sixth():
    # 6 neurons at 0.7 (> 5), 1 at 0.75 (< 2): 0.7, 0.75, 0.7, 0.75, 0.7, 0.75 -> the last, 0.75
    res = adaptive_share_threshold(_facts(1, [1.0, 0.7, 0.7, 0.7, 0.7, 0.7]))
    assert [p for p, _ in res.trace] == pytest.approx([0.7, 0.75, 0.7, 0.75, 0.7, 0.75])
    assert (res.p, res.mean_count, res.reason) == (pytest.approx(0.75), 1.0, "6 evaluations")


def test_official_search_rises_within_bounds_and_converges():
    shares = [1.0, 0.95, 0.9, 0.85, 0.8, 0.8, 0.8, 0.8]  # 8 neurons >= 0.7, 0.75 and 0.8; 4 >= 0.85
    res = adaptive_share_threshold(_facts(2, shares))
    assert [p for p, _ in res.trace] == pytest.approx([0.7, 0.75, 0.8, 0.85]) and res.converged and res.mean_count == 4.0


def test_official_search_never_ends_empty_when_it_saw_neurons():
    # 12 prompts, 8 neurons in 11 of them: 8 (> 5) for p <= 0.9 (11 >= 10.8), 0 at p = 0.95 (11 < 11.4)
    sets = [{(0, j) for j in range(8)}] * 11 + [set()]
    res = adaptive_share_threshold({"P0/0": sets}, start=0.9)
    assert [p for p, _ in res.trace][:2] == pytest.approx([0.9, 0.95])
    assert res.reason == "non-empty kept" and res.mean_count == 8.0 and res.p == 0.9


def test_facts_with_too_few_prompts_count_as_zero_in_the_official_mean():
    facts = _facts(2, [1.0, 0.9, 0.8])
    facts["P0/two"] = [{(0, 0)}, {(0, 0)}]  # 2 prompts: no knowledge neuron under the official rule
    assert adaptive_share_threshold(facts).mean_count == 2.0  # (3 + 3 + 0) / 3
    assert adaptive_share_threshold(facts, rule="paper").mean_count == 7 / 3


def test_unknown_rule_is_refused():
    import pytest

    with pytest.raises(ValueError, match="share rule"):
        refine_fact([{(0, 0)}], 0.5, "strict")


def test_official_rule_uses_the_scripts_float_p():
    """2_get_kn.py accumulates p in floats (0.7 + 0.05 + 0.05 + 0.05 + 0.05 = 0.9000000000000001) and keeps
    a neuron when its count c >= n p: with n = 10 prompts, 10 p = 9.000000000000002, so a neuron in 9 of 10
    prompts is dropped at that p, where exact arithmetic (9 >= 9) would keep it."""
    from kn_lib.refine import official_p_sequence, refine_fact

    seq = official_p_sequence(moves=[1, 1, 1, 1])
    assert seq[-1] == 0.9000000000000001 and seq[-1] != 0.9
    assert official_p_sequence(moves=[-1])[-1] == 0.6499999999999999
    sets = [{(0, 0)}] * 9 + [set()]
    assert refine_fact(sets, seq[-1]) == set()
    assert refine_fact(sets, 0.9) == {(0, 0)}
    # the search reaches that p by the same additions: 10 neurons in 9 of 10 prompts (> 5) send p up until
    # 0.9000000000000001 drops them all, then down once more (the sixth and last evaluation)
    many = [{(0, j) for j in range(10)}] * 9 + [set()]
    res = adaptive_share_threshold({"P0/0": many})
    assert [p for p, _ in res.trace] == official_p_sequence(moves=[1, 1, 1, 1, -1])
    assert res.trace[4] == (0.9000000000000001, 0.0) and res.p == 0.8500000000000001 and res.mean_count == 10.0
