"""The critiques' published numbers (``kn_lib.book.paper.CRITICS``): each names its paper and its table, the
papers carry their arXiv ids and venues, and ``critic_value`` reads them like ``value`` reads the paper's."""

from __future__ import annotations

import re

import pytest

from kn_lib.book import paper
from kn_lib.book.paper import CRITIC_PAPERS, CRITICS, NUMBERS, PaperNumber, critic_value

EXPECTED = {
    # Hase et al. 2023: R^2 of ROME's rewrite score on layer / tracing / both (GPT-J, CounterFact)
    "hase_rome_rewrite_r2_layer", "hase_rome_rewrite_r2_tracing", "hase_rome_rewrite_r2_both",
    "hase_memit_rewrite_r2_layer", "hase_rome_paraphrase_r2_both", "hase_rome_overall_r2_both",
    "hase_max_added_r2", "hase_rome_layer6_rho",
    # Niu et al. 2024: determiner-noun agreement, KN edit reliability, ROME under symmetry and synonymy
    "niu_dna2_correct_pre", "niu_dna2_correct_post", "niu_dna2_correct_change", "niu_edit_change_these",
    "niu_kn_edit_reliability_counterfact_gptj",
    "niu_rome_gpt2xl_p101_synonym", "niu_rome_gpt2xl_p36_symmetry",
    "niu_rome_llama2_p101_synonym", "niu_rome_llama2_p1376_symmetry",
}
SOURCE = re.compile(r"(Table|Figure|Section|Appendix) [0-9A-Z]")


def test_expected_keys_present_and_apart_from_the_papers_own():
    assert EXPECTED <= set(CRITICS)
    assert not set(CRITICS) & set(NUMBERS)
    assert all(isinstance(n, PaperNumber) for n in CRITICS.values())


@pytest.mark.parametrize("key", sorted(CRITICS))
def test_every_where_names_a_critic_paper_and_its_table(key):
    number = CRITICS[key]
    name, _, rest = number.where.partition(", ")
    assert name in CRITIC_PAPERS, f"{key}: {number.where!r} names no paper of CRITIC_PAPERS"
    assert SOURCE.search(rest), f"{key}: {number.where!r} names no table, figure, section or appendix"
    assert number.what
    assert key.startswith(name.split()[0].lower() + "_")  # hase_* from Hase et al., niu_* from Niu et al.


def test_papers_carry_arxiv_id_venue_and_year():
    assert len(CRITIC_PAPERS) == 3
    for name, citation in CRITIC_PAPERS.items():
        year = name.rsplit(" ", 1)[1]
        assert re.fullmatch(r"[A-Z][a-z]+ et al\. 20\d\d", name)
        assert re.search(r"arXiv:\d{4}\.\d{5}\b", citation)
        assert re.search(rf"\b(NeurIPS|ICLR) {year}\b", citation)
    ids = [re.search(r"arXiv:(\S+)", c).group(1) for c in CRITIC_PAPERS.values()]
    assert sorted(ids) == ["2301.04213", "2405.02421", "2405.14117"]


def test_values_agree_with_their_tables():
    r2 = {k: n.value for k, n in CRITICS.items() if "_r2_" in k}
    assert all(0 <= v <= 1 for v in r2.values())
    # the interacted model nests the layer-only one: its R^2 is never lower
    for key, both in r2.items():
        if key.endswith("_both") or key.endswith("_both_concentrated"):
            assert both >= r2[key.replace("_both", "_layer")]
    # the largest added R^2 (Section 5.3) is the Fact Forcing FT-5 row of Table 3
    added = [r2[k] - r2[k.replace("_both", "_layer")] for k in r2 if k.endswith("rewrite_r2_both")]
    assert max(added) == pytest.approx(critic_value("hase_max_added_r2"), abs=1e-9)
    pre, post = critic_value("niu_dna2_correct_pre"), critic_value("niu_dna2_correct_post")
    assert post - pre == pytest.approx(critic_value("niu_dna2_correct_change"))
    assert all(CRITICS[k].unit == "%" for k in CRITICS if k.startswith("niu_rome_"))


def test_critic_value_reads_and_raises_listing_known_keys():
    assert critic_value("hase_rome_rewrite_r2_layer") == CRITICS["hase_rome_rewrite_r2_layer"].value == 0.947
    assert critic_value("niu_rome_gpt2xl_p1376_symmetry") == 23.71
    with pytest.raises(KeyError) as err:
        critic_value("no_such_critique_number")
    message = str(err.value)
    assert "no_such_critique_number" in message and "hase_rome_rewrite_r2_layer" in message
    with pytest.raises(KeyError):
        paper.value("hase_rome_rewrite_r2_layer")  # the paper's own numbers stay apart
