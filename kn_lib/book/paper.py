"""The paper's own numbers (Dai et al., ACL 2022), each with its table or figure, in one place; and the
published numbers of three critiques of knowledge neurons (``CRITICS``, their papers in ``CRITIC_PAPERS``).

The book's "paper vs ours" tables are two columns of data: these values and the ones computed here.
Nothing else in the project types a result of the paper, or of a critique, by hand.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperNumber:
    value: float
    where: str  # table / figure / section of the paper
    what: str
    unit: str = ""


MODEL = "bert-base-cased"

NUMBERS: dict[str, PaperNumber] = {
    # dataset (section 4.2, Table 1 caption)
    "n_facts": PaperNumber(27_738, "Section 4.2", "relational facts"),
    "n_prompts": PaperNumber(253_448, "Section 4.2", "prompts"),
    "n_relations": PaperNumber(34, "Section 4.2", "relations with at least 4 templates"),
    "templates_per_relation": PaperNumber(8.63, "Section 4.2", "mean templates per relation"),
    "seconds_per_fact_v100": PaperNumber(
        13.3, "Section 4.1", "seconds to find the KNs of one fact (9 prompts), V100", "s"),
    # statistics (Table 2)
    "kn_per_fact_ours": PaperNumber(4.13, "Table 2", "knowledge neurons per fact, integrated gradients"),
    "kn_per_fact_baseline": PaperNumber(3.96, "Table 2", "knowledge neurons per fact, activation baseline"),
    "intra_overlap_ours": PaperNumber(1.23, "Table 2", "shared KNs, intra-relation fact pairs, integrated gradients"),
    "intra_overlap_baseline": PaperNumber(2.85, "Table 2", "shared KNs, intra-relation fact pairs, baseline"),
    "inter_overlap_ours": PaperNumber(0.09, "Table 2", "shared KNs, inter-relation fact pairs, integrated gradients"),
    "inter_overlap_baseline": PaperNumber(1.92, "Table 2", "shared KNs, inter-relation fact pairs, baseline"),
    # suppress / amplify (Figures 4 and 5, captions)
    "suppress_change_ours": PaperNumber(-29.03, "Figure 4", "relative change of p(answer) when KNs are zeroed", "%"),
    "suppress_change_baseline": PaperNumber(-1.47, "Figure 4", "same, activation-baseline neurons", "%"),
    "amplify_change_ours": PaperNumber(31.17, "Figure 5", "relative change of p(answer) when KNs are doubled", "%"),
    "amplify_change_baseline": PaperNumber(-1.27, "Figure 5", "same, activation-baseline neurons", "%"),
    # BingRel activation (Table 4)
    "bing_t1_ours": PaperNumber(0.485, "Table 4", "mean KN activation, head+tail sentences (T1)"),
    "bing_t2_ours": PaperNumber(0.019, "Table 4", "mean KN activation, head-only sentences (T2)"),
    "bing_t3_ours": PaperNumber(-0.018, "Table 4", "mean KN activation, random sentences (T3)"),
    "bing_t1_baseline": PaperNumber(2.472, "Table 4", "baseline, T1"),
    "bing_t2_baseline": PaperNumber(2.312, "Table 4", "baseline, T2"),
    "bing_t3_baseline": PaperNumber(2.244, "Table 4", "baseline, T3"),
    # updating facts (Table 6)
    "update_change_rate_kn": PaperNumber(48.5, "Table 6", "change rate, knowledge neurons", "%"),
    "update_change_rate_random": PaperNumber(4.7, "Table 6", "change rate, random neurons", "%"),
    "update_success_rate_kn": PaperNumber(34.4, "Table 6", "success rate, knowledge neurons", "%"),
    "update_success_rate_random": PaperNumber(0.0, "Table 6", "success rate, random neurons", "%"),
    "update_intra_ppl_kn": PaperNumber(8.4, "Table 6", "delta intra-relation perplexity, knowledge neurons"),
    "update_intra_ppl_random": PaperNumber(10.1, "Table 6", "delta intra-relation perplexity, random neurons"),
    "update_inter_ppl_kn": PaperNumber(7.2, "Table 6", "delta inter-relation perplexity, knowledge neurons"),
    "update_inter_ppl_random": PaperNumber(4.3, "Table 6", "delta inter-relation perplexity, random neurons"),
}

# Table 5: erasing relations, perplexity before / after on the erased relation and on the others
ERASE = {
    "P19": {"erased_before": 1450.0, "erased_after": 2996.0, "other_before": 120.3, "other_after": 121.6},
    "P27": {"erased_before": 28.0, "erased_after": 38.3, "other_before": 143.6, "other_after": 149.5},
    "P106": {"erased_before": 2279.0, "erased_after": 5202.0, "other_before": 120.1, "other_after": 125.3},
    "P937": {"erased_before": 58.0, "erased_after": 140.0, "other_before": 138.0, "other_after": 151.9},
}
ERASE_WHERE = "Table 5"


def value(key: str) -> float:
    """A number of the paper by key (KeyError names the known keys)."""
    try:
        return NUMBERS[key].value
    except KeyError:
        raise KeyError(f"{key!r}: not a paper number; known: {', '.join(NUMBERS)}") from None


# Three critiques of knowledge neurons. A key of CRITIC_PAPERS is the short name every ``where`` of
# CRITICS starts with ("Hase et al. 2023, Table 1"). Each value was read in the paper's own text: Hase et
# al. in the NeurIPS camera-ready (its Table 3-8 are the appendix tables), Niu et al. in the ICLR PDF.
CRITIC_PAPERS: dict[str, str] = {
    "Hase et al. 2023": (
        "Peter Hase, Mohit Bansal, Been Kim, Asma Ghandeharioun. Does Localization Inform Editing? Surprising "
        "Differences in Causality-Based Localization vs. Knowledge Editing in Language Models. NeurIPS 2023. "
        "arXiv:2301.04213"
    ),
    "Niu et al. 2024": (
        "Jingcheng Niu, Andrew Liu, Zining Zhu, Gerald Penn. What does the Knowledge Neuron Thesis Have to do "
        "with Knowledge? ICLR 2024 (spotlight). arXiv:2405.02421"
    ),
    "Chen et al. 2025": (
        "Yuheng Chen, Pengfei Cao, Yubo Chen, Kang Liu, Jun Zhao. Knowledge Localization: Mission Not "
        "Accomplished? Enter Query Localization! ICLR 2025. arXiv:2405.14117"
    ),
}

_HASE, _NIU = "Hase et al. 2023", "Niu et al. 2024"
# Hase et al.: GPT-J, CounterFact (n = 652 known facts), Error Injection (the ROME/CounterFact edit) unless
# named; R^2 of a linear regression of the outcome on the edit layer (categorical), on the tracing effect
# (Causal Tracing, window 5, max over tokens) at that layer, or on both interacted. FT-1 / FT-5: constrained
# Adam fine-tuning of 1 / 5 layers; MEMIT edits 5 layers.
_RS = "rewrite score (rise of p(o_false) as a fraction of its possible rise)"

CRITICS: dict[str, PaperNumber] = {
    # --- Hase et al. 2023 ---
    "hase_n_facts": PaperNumber(
        652, f"{_HASE}, Section 4.2", "CounterFact facts GPT-J completes correctly (the sample)"),
    "hase_rome_rewrite_r2_layer": PaperNumber(0.947, f"{_HASE}, Table 1", f"R^2 of ROME {_RS} on edit layer alone"),
    "hase_rome_rewrite_r2_tracing": PaperNumber(
        0.016, f"{_HASE}, Table 1", f"R^2 of ROME {_RS} on tracing effect alone"),
    "hase_rome_rewrite_r2_both": PaperNumber(
        0.948, f"{_HASE}, Table 1", f"R^2 of ROME {_RS} on edit layer and tracing effect"),
    "hase_rome_rewrite_r2_layer_concentrated": PaperNumber(
        0.927, f"{_HASE}, Table 2",
        "same as hase_rome_rewrite_r2_layer, the 10% (74 of 652) facts with the most concentrated tracing effects"),
    "hase_rome_rewrite_r2_tracing_concentrated": PaperNumber(
        0.02, f"{_HASE}, Table 2", "same as hase_rome_rewrite_r2_tracing, concentrated-tracing subset"),
    "hase_rome_rewrite_r2_both_concentrated": PaperNumber(
        0.929, f"{_HASE}, Table 2", "same as hase_rome_rewrite_r2_both, concentrated-tracing subset"),
    "hase_memit_rewrite_r2_layer": PaperNumber(0.677, f"{_HASE}, Table 3", f"R^2 of MEMIT {_RS} on edit layer alone"),
    "hase_memit_rewrite_r2_tracing": PaperNumber(
        0.024, f"{_HASE}, Table 3", f"R^2 of MEMIT {_RS} on tracing effect alone"),
    "hase_memit_rewrite_r2_both": PaperNumber(
        0.678, f"{_HASE}, Table 3", f"R^2 of MEMIT {_RS} on edit layer and tracing effect"),
    "hase_ft1_rewrite_r2_layer": PaperNumber(0.756, f"{_HASE}, Table 3", f"R^2 of FT-1 {_RS} on edit layer alone"),
    "hase_ft1_rewrite_r2_tracing": PaperNumber(
        0.062, f"{_HASE}, Table 3", f"R^2 of FT-1 {_RS} on tracing effect alone"),
    "hase_ft1_rewrite_r2_both": PaperNumber(
        0.758, f"{_HASE}, Table 3", f"R^2 of FT-1 {_RS} on edit layer and tracing effect"),
    "hase_ft5_rewrite_r2_layer": PaperNumber(0.775, f"{_HASE}, Table 3", f"R^2 of FT-5 {_RS} on edit layer alone"),
    "hase_ft5_rewrite_r2_tracing": PaperNumber(
        0.055, f"{_HASE}, Table 3", f"R^2 of FT-5 {_RS} on tracing effect alone"),
    "hase_ft5_rewrite_r2_both": PaperNumber(
        0.777, f"{_HASE}, Table 3", f"R^2 of FT-5 {_RS} on edit layer and tracing effect"),
    "hase_forcing_ft5_rewrite_r2_layer": PaperNumber(
        0.634, f"{_HASE}, Table 3",
        "R^2 of FT-5 rewrite score on edit layer alone, Fact Forcing (maximise p(o_true | s_noise, r))"),
    "hase_forcing_ft5_rewrite_r2_tracing": PaperNumber(
        0.10, f"{_HASE}, Table 3", "R^2 of FT-5 rewrite score on tracing effect alone, Fact Forcing"),
    "hase_forcing_ft5_rewrite_r2_both": PaperNumber(
        0.666, f"{_HASE}, Table 3", "R^2 of FT-5 rewrite score on edit layer and tracing effect, Fact Forcing"),
    "hase_forcing_rome_rewrite_r2_layer": PaperNumber(
        0.422, f"{_HASE}, Table 3", "R^2 of ROME rewrite score on edit layer alone, Fact Forcing"),
    "hase_forcing_rome_rewrite_r2_tracing": PaperNumber(
        0.004, f"{_HASE}, Table 3", "R^2 of ROME rewrite score on tracing effect alone, Fact Forcing"),
    "hase_forcing_rome_rewrite_r2_both": PaperNumber(
        0.425, f"{_HASE}, Table 3", "R^2 of ROME rewrite score on edit layer and tracing effect, Fact Forcing"),
    "hase_max_added_r2": PaperNumber(
        0.032, f"{_HASE}, Section 5.3 and Table 3", "largest rise of R^2 (rewrite score) from adding tracing to edit layer, "
        "over all editing problems and methods (Fact Forcing, FT-5)"),
    "hase_layer_r2_mean": PaperNumber(
        0.585, f"{_HASE}, Section 5.3",
        "mean R^2 of the layer-only regression of rewrite score over the Figure 6 conditions"),
    "hase_rome_paraphrase_r2_layer": PaperNumber(
        0.279, f"{_HASE}, Table 4", "R^2 of ROME paraphrase score on edit layer alone"),
    "hase_rome_paraphrase_r2_tracing": PaperNumber(
        0.001, f"{_HASE}, Table 4", "R^2 of ROME paraphrase score on tracing effect alone"),
    "hase_rome_paraphrase_r2_both": PaperNumber(
        0.303, f"{_HASE}, Table 4", "R^2 of ROME paraphrase score on edit layer and tracing effect"),
    "hase_rome_neighborhood_r2_layer": PaperNumber(
        0.011, f"{_HASE}, Table 5", "R^2 of ROME neighborhood score on edit layer alone"),
    "hase_rome_neighborhood_r2_tracing": PaperNumber(
        0.003, f"{_HASE}, Table 5", "R^2 of ROME neighborhood score on tracing effect alone"),
    "hase_rome_neighborhood_r2_both": PaperNumber(
        0.015, f"{_HASE}, Table 5", "R^2 of ROME neighborhood score on edit layer and tracing effect"),
    "hase_rome_overall_r2_layer": PaperNumber(
        0.62, f"{_HASE}, Table 6",
        "R^2 of ROME overall score (mean of rewrite, paraphrase, neighborhood) on edit layer alone (0.618 in Table 7)"),
    "hase_rome_overall_r2_tracing": PaperNumber(
        0.003, f"{_HASE}, Table 6", "R^2 of ROME overall score on tracing effect alone"),
    "hase_rome_overall_r2_both": PaperNumber(
        0.629, f"{_HASE}, Table 6", "R^2 of ROME overall score on edit layer and tracing effect"),
    "hase_rome_zsre_rewrite_r2_layer": PaperNumber(
        0.795, f"{_HASE}, Table 8", "R^2 of ROME rewrite score on edit layer alone, GPT-J on ZSRE"),
    "hase_rome_zsre_rewrite_r2_tracing": PaperNumber(
        0.042, f"{_HASE}, Table 8", "R^2 of ROME rewrite score on tracing effect alone, GPT-J on ZSRE"),
    "hase_rome_layer6_rho": PaperNumber(
        -0.13, f"{_HASE}, Figure 4 and Section 4.3",
        "correlation of ROME rewrite score with the tracing effect at layer 6 (p < 1e-3)"),
    # --- Niu et al. 2024 --- (Section 3: bert-base-cased, BLiMP determiner_noun_agreement_2 unless named)
    "niu_dna2_det_noun_pairs": PaperNumber(
        283, f"{_NIU}, Section 3.2", "unique Det-N pairs among the paradigm's 1000 sentence pairs"),
    "niu_singular_kn_in_this_pairs": PaperNumber(
        93, f"{_NIU}, Figure 2b", "Det-N pairs with 'this' whose KNs include the singular neuron w(10)_2096", "%"),
    "niu_singular_kn_in_that_pairs": PaperNumber(
        75, f"{_NIU}, Figure 2b", "Det-N pairs with 'that' whose KNs include the singular neuron w(10)_2096", "%"),
    "niu_plural_kn_in_plural_pairs": PaperNumber(
        100, f"{_NIU}, Figure 2b", "Det-N pairs with 'these' or 'those' whose KNs include the plural neuron w(9)_1094", "%"),
    "niu_edit_change_this": PaperNumber(
        316, f"{_NIU}, Figure 6a", "change of p('this') after the KN edit, (post - pre) / min(post, pre)", "%"),
    "niu_edit_change_these": PaperNumber(
        -124, f"{_NIU}, Figure 6a", "change of p('these') after the KN edit, (post - pre) / min(post, pre)", "%"),
    "niu_edit_change_that": PaperNumber(
        208, f"{_NIU}, Figure 6a", "change of p('that') after the KN edit, (post - pre) / min(post, pre)", "%"),
    "niu_edit_change_those": PaperNumber(
        -158, f"{_NIU}, Figure 6a", "change of p('those') after the KN edit, (post - pre) / min(post, pre)", "%"),
    "niu_dna2_correct_pre": PaperNumber(
        100, f"{_NIU}, Figure 6b", "pairs where the model prefers the correct determiner, before the KN edit", "%"),
    "niu_dna2_correct_post": PaperNumber(
        94.8, f"{_NIU}, Figure 6b", "pairs where the model prefers the correct determiner, after the KN edit", "%"),
    "niu_dna2_correct_change": PaperNumber(
        -5.2, f"{_NIU}, Figure 6b and Section 3.2", "change of that share: the predictions the edit overturns "
        "(the most of any BLiMP paradigm: 'at most 5.2% ... overturned')", "%"),
    "niu_dna_irr2_correct_change": PaperNumber(
        -2.6, f"{_NIU}, Figure 6b", "same change, determiner_noun_agreement_irregular_2 (99.5% -> 96.9%)", "%"),
    "niu_dna_adj2_correct_change": PaperNumber(
        -2.7, f"{_NIU}, Figure 6b", "same change, determiner_noun_agreement_with_adj_2 (97.1% -> 94.4%)", "%"),
    "niu_dna_adj_irr2_correct_change": PaperNumber(
        -2.0, f"{_NIU}, Figure 6b", "same change, determiner_noun_agreement_with_adj_irregular_2 (97.4% -> 95.4%)", "%"),
    # KN edit's reliability on facts, as Niu et al. quote it from Yao et al. (2023)
    "niu_kn_edit_reliability_zsre_t5xl": PaperNumber(
        22.51, f"{_NIU}, Figure 6c", "KN edit reliability, ZsRE, T5-XL (from Yao et al. 2023)", "%"),
    "niu_kn_edit_reliability_zsre_gptj": PaperNumber(
        11.34, f"{_NIU}, Figure 6c", "KN edit reliability, ZsRE, GPT-J (from Yao et al. 2023)", "%"),
    "niu_kn_edit_reliability_counterfact_t5xl": PaperNumber(
        47.86, f"{_NIU}, Figure 6c", "KN edit reliability, CounterFact, T5-XL (from Yao et al. 2023)", "%"),
    "niu_kn_edit_reliability_counterfact_gptj": PaperNumber(
        1.66, f"{_NIU}, Figure 6c", "KN edit reliability, CounterFact, GPT-J (from Yao et al. 2023)", "%"),
    # ROME under the new criteria (Section 4, Table 1; data in Appendix E): symmetry = after editing the
    # capital (P1376 / P36), the reverse query prefers the edited subject; synonym = after editing P101's field
    # of work, "[S] is a" prefers the new occupation name
    "niu_symmetry_n_p1376": PaperNumber(234, f"{_NIU}, Appendix E", "P1376 (capital of) facts in the symmetry set"),
    "niu_symmetry_n_p36": PaperNumber(703, f"{_NIU}, Appendix E", "P36 (capital) facts in the symmetry set"),
    "niu_synonym_n_p101": PaperNumber(568, f"{_NIU}, Appendix E", "P101 (field of work) entries in the synonym set"),
    "niu_rome_gpt2xl_p101_reliability": PaperNumber(99.82, f"{_NIU}, Table 1", "ROME reliability, GPT-2 XL, P101", "%"),
    "niu_rome_gpt2xl_p101_synonym": PaperNumber(52.35, f"{_NIU}, Table 1", "ROME synonym success, GPT-2 XL, P101", "%"),
    "niu_rome_gpt2xl_p1376_reliability": PaperNumber(
        96.37, f"{_NIU}, Table 1", "ROME reliability, GPT-2 XL, P1376", "%"),
    "niu_rome_gpt2xl_p1376_symmetry": PaperNumber(
        23.71, f"{_NIU}, Table 1", "ROME symmetry success, GPT-2 XL, P1376", "%"),
    "niu_rome_gpt2xl_p36_reliability": PaperNumber(99.79, f"{_NIU}, Table 1", "ROME reliability, GPT-2 XL, P36", "%"),
    "niu_rome_gpt2xl_p36_symmetry": PaperNumber(25.17, f"{_NIU}, Table 1", "ROME symmetry success, GPT-2 XL, P36", "%"),
    "niu_rome_llama2_p101_reliability": PaperNumber(100, f"{_NIU}, Table 1", "ROME reliability, LLaMA-2 7B, P101", "%"),
    "niu_rome_llama2_p101_synonym": PaperNumber(
        58.36, f"{_NIU}, Table 1", "ROME synonym success, LLaMA-2 7B, P101", "%"),
    "niu_rome_llama2_p1376_reliability": PaperNumber(
        100, f"{_NIU}, Table 1", "ROME reliability, LLaMA-2 7B, P1376", "%"),
    "niu_rome_llama2_p1376_symmetry": PaperNumber(
        33.40, f"{_NIU}, Table 1", "ROME symmetry success, LLaMA-2 7B, P1376", "%"),
    "niu_rome_llama2_p36_reliability": PaperNumber(100, f"{_NIU}, Table 1", "ROME reliability, LLaMA-2 7B, P36", "%"),
    "niu_rome_llama2_p36_symmetry": PaperNumber(
        33.64, f"{_NIU}, Table 1", "ROME symmetry success, LLaMA-2 7B, P36", "%"),
    # Chen et al. 2025: no number yet; its tables were not readable in a stored copy of the paper
}


def critic_value(key: str) -> float:
    """A published number of a critique by key (KeyError names the known keys)."""
    try:
        return CRITICS[key].value
    except KeyError:
        raise KeyError(f"{key!r}: not a critique number; known: {', '.join(CRITICS)}") from None
