"""The paper's own numbers (Dai et al., ACL 2022), each with its table or figure, in one place.

The book's "paper vs ours" tables are two columns of data: these values and the ones computed here.
Nothing else in the project types a result of the paper by hand.
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
    "seconds_per_fact_v100": PaperNumber(13.3, "Section 4.1", "seconds to find the KNs of one fact (9 prompts), V100", "s"),
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
