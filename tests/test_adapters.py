"""How each model family is asked: answer position, skipped templates, single-token answers, FFN layout."""

import pytest
import torch

from kn_lib.adapters import MultiTokenObject, UnusablePrompt, find_ffn_projections
from kn_lib.pipeline import encode_fact, target_coverage


def test_masked_lm_answer_is_the_mask(tiny_bert):
    p = tiny_bert.encode("[X] was born in [Y] .", "alice", "paris")
    assert p.text == "alice was born in [MASK] ."
    assert p.input_ids[p.answer_pos] == tiny_bert.tokenizer.mask_token_id
    assert p.target_id == tiny_bert.tokenizer.convert_tokens_to_ids("paris")
    # [Y] before [X] is fine for a masked LM
    q = tiny_bert.encode("[Y] is where [X] was born .", "alice", "paris")
    assert q.input_ids[q.answer_pos] == tiny_bert.tokenizer.mask_token_id


def test_causal_lm_cuts_the_prompt_before_the_answer(tiny_llama):
    p = tiny_llama.encode("[X] was born in [Y] .", "alice", "paris")
    assert p.text == "alice was born in"
    assert p.answer_pos == len(p.input_ids) - 1
    assert p.target_id == tiny_llama.tokenizer.convert_tokens_to_ids("paris")
    with pytest.raises(UnusablePrompt, match="precedes"):
        tiny_llama.encode("[Y] is where [X] was born .", "alice", "paris")


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_multi_token_object(request, fixture):
    adapter = request.getfixturevalue(fixture)
    with pytest.raises(MultiTokenObject):
        adapter.encode("[X] was born in [Y] .", "alice", "paris france")
    # the draws' form: None instead of the exception, the same id otherwise
    assert adapter.single_token("paris france", "[X] was born in [Y] .") is None
    assert adapter.single_token("paris", "[X] was born in [Y] .") == adapter.answer_token("paris", "[X] was born in [Y] .")


def test_encode_fact_reports_every_unusable_prompt(tiny_llama):
    fact = {"fact_id": "P19/0", "relation": "P19", "subject": "alice", "object": "paris"}
    usable, skipped = encode_fact(tiny_llama, fact, ["[X] was born in [Y] .", "[Y] is where [X] was born ."])
    assert [t for t, _ in usable] == [0]
    assert skipped == [{"fact_id": "P19/0", "relation": "P19", "template_id": 1, "reason": skipped[0]["reason"]}]
    usable, skipped = encode_fact(tiny_llama, {**fact, "object": "paris france"}, ["[X] was born in [Y] ."])
    assert usable == [] and skipped[0]["template_id"] is None and "multi-token" in skipped[0]["reason"]


def test_coverage_per_relation(tiny_bert):
    facts = [
        {"relation": "P19", "object": "paris"},
        {"relation": "P19", "object": "paris france"},
        {"relation": "P36", "object": "rome"},
    ]
    cov = target_coverage(tiny_bert, facts).set_index("relation")
    assert cov.loc["P19", "coverage"] == 0.5 and cov.loc["P36", "coverage"] == 1.0


def test_ffn_layout_and_shapes(tiny):
    assert len(tiny.projections) == tiny.n_layers == 3
    assert tiny.n_neurons == 48
    p = tiny.encode("[X] was born in [Y] .", "alice", "paris")
    assert tiny.activations(p).shape == (3, 48)


def test_patch_changes_only_the_answer_position(tiny_bert):
    p = tiny_bert.encode("[X] was born in [Y] .", "alice", "paris")
    seen = {}

    def capture(module, args):
        seen.setdefault("x", []).append(args[0].clone())

    h = tiny_bert.projections[1].register_forward_pre_hook(capture)
    tiny_bert.answer_probability(p)
    h.remove()
    with tiny_bert.patch(1, p.answer_pos, lambda a: torch.zeros_like(a)):
        h = tiny_bert.projections[1].register_forward_pre_hook(capture)  # runs after the patch
        tiny_bert.answer_probability(p)
        h.remove()
    before, after = seen["x"]
    others = [i for i in range(before.shape[1]) if i != p.answer_pos]
    assert before[0, p.answer_pos].abs().sum() > 0 and after[0, p.answer_pos].abs().sum() == 0
    assert torch.equal(before[:, others], after[:, others])


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        find_ffn_projections(torch.nn.Linear(2, 2))
