"""Common neurons and degenerate knowledge neurons: counts on hand-built tables, the split, and the
four-row forward pass checked against separate patched passes on a tiny random model."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import torch

from kn_lib.experiments.evaluation import FactPrompts, SkipLog, seeded_rng
from kn_lib.experiments.redundancy import (
    common_neurons, common_summary, degenerate_summary, degenerate_test, neuron_recurrence, split_halves, without_common,
)
from tiny_facts import FACTS, RELATIONS, refined_table

pytestmark = pytest.mark.usefixtures("one_thread")

# (2, 7) in 3 of 4 facts, both relations; (1, 3) in 2 facts of P19; the others once
KNS = {"P19/0": [(1, 3), (2, 7)], "P19/1": [(1, 3), (2, 7), (0, 5)], "P36/0": [(2, 7), (0, 11)], "P36/2": [(2, 40)]}


def test_recurrence_counts_facts_and_relations():
    refined = refined_table(KNS)
    refined = pd.concat([refined, refined.iloc[[0]]], ignore_index=True)  # a repeated row counts once
    rec = neuron_recurrence(refined)
    assert list(zip(rec.layer, rec.neuron)) == [(2, 7), (1, 3), (0, 5), (0, 11), (2, 40)]
    top = rec.iloc[0]
    assert (top.n_facts, top.share_facts, top.n_relations, top.share_relations) == (3, 0.75, 2, 1.0)
    second = rec.iloc[1]
    assert (second.n_facts, second.share_facts, second.n_relations, second.share_relations) == (2, 0.5, 1, 0.5)
    assert rec.n_facts.sum() == 8  # distinct (fact, neuron) pairs


def test_common_threshold_is_strict_and_filter_removes_exactly_those_rows():
    refined = refined_table(KNS)
    assert common_neurons(refined, max_share=0.5) == {(2, 7)}  # (1, 3) is at exactly 0.5: not more
    assert common_neurons(refined, max_share=0.49) == {(2, 7), (1, 3)}
    assert common_neurons(refined, max_share=0.75) == set()
    common = {(2, 7), (1, 3)}
    kept = without_common(refined, common)
    assert list(kept.columns) == list(refined.columns) and list(kept.index) == list(range(len(kept)))
    expected = refined[[(l, n) not in common for l, n in zip(refined.layer, refined.neuron)]]
    assert kept.equals(expected.reset_index(drop=True)) and len(kept) == 8 - 5
    assert set(kept.fact_id) == {"P19/1", "P36/0", "P36/2"}  # P19/0 had only common neurons

    s = common_summary(refined, max_share=0.49)
    assert (s["n_facts"], s["n_neurons"], s["n_common"]) == (4, 5, 2)
    assert s["share_neurons_common"] == pytest.approx(2 / 5)
    assert s["share_rows_common"] == pytest.approx(5 / 8)
    assert s["share_facts_emptied"] == pytest.approx(1 / 4)


def test_split_halves():
    neurons = [(0, 1), (0, 4), (1, 2), (1, 9), (2, 3), (2, 8), (2, 30)]
    a, b = split_halves(neurons, seeded_rng(0, "P19/0"))
    assert (a, b) == split_halves(list(reversed(neurons)), seeded_rng(0, "P19/0"))  # seeded, order-free
    assert not set(a) & set(b) and set(a) | set(b) == set(neurons)
    assert (len(a), len(b)) == (3, 4)
    draws = {tuple(split_halves(neurons, seeded_rng(s, "P19/0"))[0]) for s in range(10)}
    assert len(draws) > 1  # the seed matters
    assert tuple(map(len, split_halves(neurons[:2], seeded_rng(0, "x")))) == (1, 1)
    for few in ([], [(0, 1)], [(0, 1), (0, 1)]):
        with pytest.raises(ValueError, match="at least 2"):
            split_halves(few, seeded_rng(0, "x"))


def _p_with_zeroed(adapter, encoded, zeroed):
    """p(answer) and top-1 from a plain forward pass with the given neurons set to 0 by ``adapter.patch``."""
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for layer in sorted({l for l, _ in zeroed}):
            index = torch.tensor([n for l, n in zeroed if l == layer], device=adapter.device)

            def zero(act, index=index):
                out = act.clone()
                out[:, index] = 0.0
                return out

            stack.enter_context(adapter.patch(layer, encoded.answer_pos, zero))
        logits = adapter.logits_at(encoded.input_ids[None].to(adapter.device), encoded.answer_pos)
        dist = logits.float().softmax(-1)[0].cpu()
    return float(dist[encoded.target_id]), int(dist.argmax()) == encoded.target_id


def test_degenerate_test_matches_separate_patched_passes(tiny):
    prompts = FactPrompts(tiny, FACTS, RELATIONS, SkipLog("test")).of("P19/0")
    neurons = [(0, 11), (1, 3), (1, 20), (2, 7), (2, 40), (2, 41)]  # two halves share layers
    rows = pd.DataFrame(degenerate_test(tiny, prompts, neurons, seeded_rng(0, "P19/0")))
    a, b = split_halves(neurons, seeded_rng(0, "P19/0"))
    assert len(rows) == 3 * len(prompts) and set(rows.part) == {"A", "B", "both"}
    assert dict(zip(rows.part, rows.n_neurons)) == {"A": 3, "B": 3, "both": 6}
    changed = 0
    for prompt in prompts:
        mine = rows[rows.template_id == prompt.template_id].set_index("part")
        p0, c0 = _p_with_zeroed(tiny, prompt.encoded, [])
        assert mine.p_before.tolist() == pytest.approx([p0] * 3, rel=1e-5) and (mine.correct_before == c0).all()
        for part, zeroed in (("A", a), ("B", b), ("both", a + b)):
            p, c = _p_with_zeroed(tiny, prompt.encoded, zeroed)
            assert mine.loc[part, "p_after"] == pytest.approx(p, rel=1e-5), part
            assert mine.loc[part, "correct_after"] == c, part
            changed += abs(p - p0) > 1e-4 * p0
    assert changed  # zeroing changes something, so the comparison above could fail
    with pytest.raises(ValueError, match="one fact"):
        degenerate_test(tiny, prompts + FactPrompts(tiny, FACTS, RELATIONS, SkipLog("t")).of("P19/1"),
                        neurons, seeded_rng(0, "x"))


def _rows(fact: str, n: int, lost: dict[str, int], correct_before: int | None = None) -> list[dict]:
    """n prompts, ``correct_before`` of them (default all) correct, of which ``lost[part]`` lose it."""
    correct_before = n if correct_before is None else correct_before
    out = []
    for t in range(n):
        for part in ("A", "B", "both"):
            before = t < correct_before
            out.append({"fact_id": fact, "relation": fact.split("/")[0], "template_id": t, "part": part,
                        "n_neurons": {"A": 2, "B": 3, "both": 5}[part], "p_before": 0.5, "p_after": 0.4,
                        "correct_before": before, "correct_after": before and t >= lost[part]})
    return out


def test_degenerate_summary_rule():
    rows = pd.DataFrame(
        _rows("P19/0", 20, {"A": 0, "B": 0, "both": 10})  # degenerate: 0, 0, 0.5
        + _rows("P19/1", 20, {"A": 2, "B": 0, "both": 10})  # A alone matters (0.1)
        + _rows("P19/2", 20, {"A": 0, "B": 2, "both": 10})  # B alone matters
        + _rows("P36/0", 20, {"A": 0, "B": 0, "both": 6})  # both together at exactly 0.3: not more
        + _rows("P36/1", 20, {"A": 1, "B": 0, "both": 10})  # A at exactly 0.05: not less
        + _rows("P36/2", 20, {"A": 0, "B": 0, "both": 7}, correct_before=10)  # 0.35 of 20 prompts, 10 known
    )
    s = degenerate_summary(rows).set_index("fact_id")
    assert len(s) == 6 and s.n_prompts.eq(20).all() and s.n_neurons.eq(5).all()
    assert s.degenerate.to_dict() == {"P19/0": True, "P19/1": False, "P19/2": False, "P36/0": False,
                                      "P36/1": False, "P36/2": True}
    assert s.loc["P36/1", "drop_A"] == 0.05 and s.loc["P36/0", "drop_both"] == 0.3
    assert s.loc["P19/0", ["drop_A", "drop_B", "drop_both"]].tolist() == [0.0, 0.0, 0.5]
    assert s.loc["P36/2", "accuracy_before"] == 0.5 and s.loc["P19/0", "accuracy_before"] == 1.0
    # looser thresholds change the verdict: the rule reads its arguments
    assert degenerate_summary(rows, alone=0.11, together=0.25).set_index("fact_id").degenerate.all()
