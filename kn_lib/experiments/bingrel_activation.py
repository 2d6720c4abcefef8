"""Knowledge neurons are activated by knowledge-expressing prompts (Dai et al. 2022, section 4.6:
Tables 3 and 4), on the BINGREL web sentences (``kn_lib.bingrel``).

For each fact with knowledge neurons, three kinds of masked sentence:

* T1: sentences with head and tail, the tail masked (knowledge-expressing);
* T2: sentences with the head only, a random word masked (control);
* T3: sentences drawn from all the given bags, a random word masked, as many as T1 (control).

We read each knowledge neuron's activation at the masked position. A masked LM sees the whole
sentence with the mask token; a causal LM sees the sentence cut just before the masked word and is read
at the last token of the cut, the position that predicts the masked word (the same convention as the
cloze prompts of ``CausalLMAdapter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Mapping

import pandas as pd
import torch

from ..adapters import EncodedPrompt, ModelAdapter, UnusablePrompt
from ..bingrel import MAX_WORDS, FactBags, MaskedSentence, mask_random_word, mask_tail
from .evaluation import SkipLog, seeded_rng, tag_of
from .neuron_sets import check_refined, neurons_by_fact

TYPES = ("T1", "T2", "T3")


@dataclass(frozen=True)
class BingRelConfig:
    seed: int = 0  # draws the masked word of T2/T3 and the T3 sentences
    max_words: int = MAX_WORDS  # the random word is among the first max_words words
    max_tokens: int = 512  # longer encodings are skipped (BERT's limit; the official max_seq_length)
    max_sentences: int | None = None  # per bag and type (None: all, up to ten in BINGREL); a seeded sample
    # Table 4's mean over relations: "official" (8_plot_fig_distant.py: every relation of the run, one
    # without any activation counting 0) or "present" (ours: relations with data only)
    relation_mean: Literal["official", "present"] = "official"

    def __post_init__(self) -> None:
        if self.relation_mean not in ("official", "present"):
            raise ValueError(f"relation_mean must be 'official' or 'present', got {self.relation_mean!r}")


@dataclass(frozen=True)
class BingRelSummary:
    """Table 4: mean activation of the facts' knowledge neurons per prompt type."""

    model: str
    method: str
    n_facts: int
    n_relations: int
    t1: float  # paper: 0.485 (ours), 2.472 (baseline)
    t2: float  # paper: 0.019 / 2.312
    t3: float  # paper: -0.018 / 2.244
    n_sentences: dict[str, int]
    seed: int


@dataclass
class BingRelResult:
    table: pd.DataFrame  # one row per (fact, sentence, knowledge neuron): its activation
    by_relation: pd.DataFrame  # one row per (relation, type): mean activation
    summary: BingRelSummary
    skipped: pd.DataFrame
    config: BingRelConfig


def masked_prompts(fact: FactBags, pool: list[str], config: BingRelConfig, skips: SkipLog) -> list[tuple[str, int, MaskedSentence]]:
    """The fact's (type, sentence index, masked sentence) triples; unusable sentences are logged, and a
    fact with an empty bag gives none (so that T1, T2 and T3 average over the same facts).

    Draws come from a generator seeded by (seed, fact id), so a fact's prompts do not depend on the
    other facts of the run. ``pool`` holds every sentence T3 may draw from; a T3 sentence's index is its
    index in the pool."""
    rng = seeded_rng(config.seed, fact.fact_id)
    out: list[tuple[str, int, MaskedSentence]] = []
    empty = [kind for kind, bag in (("th_bags", fact.th_bags), ("h_bags", fact.h_bags)) if not bag]
    if empty:  # like the official script, such a fact is left out of all three types
        skips.add(f"empty {' and '.join(empty)}: fact left out of T1, T2 and T3", fact.relation, fact.fact_id)
        return out
    th_bags, h_bags = _subsample(fact.th_bags, config.max_sentences, rng), _subsample(fact.h_bags, config.max_sentences, rng)
    for i, sentence in th_bags:
        masked = mask_tail(sentence, fact.subject, fact.object)
        if masked is None:
            skips.add(f"tail {fact.object!r} not found as a word outside the head", fact.relation, fact.fact_id, f"T1 {i}")
        else:
            out.append(("T1", i, masked))
    for i, sentence in h_bags:
        masked = mask_random_word(sentence, rng, fact.subject, config.max_words)
        if masked is None:
            skips.add("no word to mask outside the head", fact.relation, fact.fact_id, f"T2 {i}")
        else:
            out.append(("T2", i, masked))
    n_t1 = sum(kind == "T1" for kind, _, _ in out)
    tried: set[int] = set()
    while sum(kind == "T3" for kind, _, _ in out) < n_t1 and len(tried) < len(pool):
        index = rng.randrange(len(pool))  # without replacement; a sentence with no maskable word is replaced
        if index in tried:
            continue
        tried.add(index)
        masked = mask_random_word(pool[index], rng, None, config.max_words)
        if masked is not None:
            out.append(("T3", index, masked))
    if sum(kind == "T3" for kind, _, _ in out) < n_t1:
        skips.add(f"the pool holds fewer than {n_t1} maskable sentences for T3", fact.relation, fact.fact_id)
    return out


def _subsample(bag: tuple[str, ...], k: int | None, rng) -> list[tuple[int, str]]:
    """(index, sentence) pairs of the bag: all of them, or k drawn without replacement, in bag order."""
    keep = range(len(bag)) if k is None or k >= len(bag) else sorted(rng.sample(range(len(bag)), k))
    return [(i, bag[i]) for i in keep]


def encode_masked(adapter: ModelAdapter, sentence: MaskedSentence, max_tokens: int = 512) -> EncodedPrompt:
    """The masked sentence as the model reads it (``target_id`` is -1: no answer is scored here)."""
    if adapter.family == "masked":
        text = sentence.prefix + adapter.tokenizer.mask_token + sentence.suffix
        ids = adapter.tokenizer(text, return_tensors="pt").input_ids[0]
        where = (ids == adapter.tokenizer.mask_token_id).nonzero().flatten()
        if len(where) != 1:
            raise UnusablePrompt(f"expected one mask token, found {len(where)}")
        pos = int(where[0])
    else:
        text = sentence.prefix.rstrip()
        if not text:
            raise UnusablePrompt("nothing precedes the masked word, a causal model cannot predict it")
        ids = adapter.tokenizer(text, return_tensors="pt").input_ids[0]
        pos = len(ids) - 1
    if len(ids) > max_tokens:
        raise UnusablePrompt(f"{len(ids)} tokens > max_tokens={max_tokens}")
    return EncodedPrompt(ids, pos, -1, text)


def mean_activation(table: pd.DataFrame, by: list[str], absolute: bool = False) -> pd.DataFrame:
    """Table 4's average activation: per fact and knowledge neuron, the mean over the fact's sentences of
    a type; then the mean over (fact, neuron) within a relation; then over relations (the official
    ``4_check_weights_distant.py`` and ``8_plot_fig_distant.py``). ``by`` is the grouping kept, e.g.
    ``["relation", "type"]`` or ``["type"]``. ``absolute=True`` averages |activation| instead (not the
    paper's): a gated FFN's neuron can carry a fact with either sign, and signed means then cancel."""
    if absolute:
        table = table.assign(activation=table["activation"].abs())
    per_neuron = table.groupby(["relation", "fact_id", "type", "layer", "neuron"])["activation"].mean().reset_index()
    per_relation = per_neuron.groupby(["relation", "type"])["activation"].mean().reset_index()
    return per_relation.groupby(by)["activation"].mean().reset_index()


def table4_means(by_relation: pd.DataFrame, relations: Iterable[str], averaging: str = "official") -> pd.Series:
    r"""Table 4's mean activation per type from the per-relation means (``mean_activation(..., ["relation",
    "type"])``). ``"official"`` (``8_plot_fig_distant.py``: ``np.mean`` over every relation of the run, a
    relation without any activation of a type counting 0)::

        A(type) = (1 / |R|) \sum_{r \in R} a_r(type),   a_r = 0 where relation r has no data;

    ``"present"`` (ours): the mean over the relations that have data."""
    if averaging not in ("official", "present"):
        raise ValueError(f"averaging must be 'official' or 'present', got {averaging!r}")
    wide = by_relation.pivot_table(index="relation", columns="type", values="activation", aggfunc="mean")
    wide = wide.reindex(columns=list(TYPES))
    if averaging == "present":
        return wide.mean()
    relations = sorted(set(relations) | set(wide.index))
    return wide.reindex(relations).fillna(0.0).mean()


@torch.no_grad()
def bingrel_activation(
    adapter: ModelAdapter, refined: pd.DataFrame, bags: Mapping[str, FactBags], config: BingRelConfig = BingRelConfig()
) -> BingRelResult:
    """Table 4 for one refined table. ``bags`` come from ``kn_lib.bingrel.load_bags``; T3 draws from all
    of their sentences (load all 34 relations for the paper's setting). Facts of ``refined`` without
    bags, with empty bags, or sentences the model cannot read are logged in ``skipped``."""
    check_refined(refined)
    skips = SkipLog("bingrel_activation")
    pool = [s for fact in bags.values() for s in (*fact.th_bags, *fact.h_bags)]
    rows = []
    for fact_id, neurons in neurons_by_fact(refined).items():
        if fact_id not in bags:
            skips.add("no BINGREL bags given for this fact", fact_id.split("/")[0], fact_id)
            continue
        fact = bags[fact_id]
        layers = torch.tensor([layer for layer, _ in neurons])
        indices = torch.tensor([index for _, index in neurons])
        for kind, i, sentence in masked_prompts(fact, pool, config, skips):
            try:
                prompt = encode_masked(adapter, sentence, config.max_tokens)
            except UnusablePrompt as err:
                skips.add(str(err), fact.relation, fact_id, f"{kind} {i}")
                continue
            acts = adapter.activations(prompt)[layers, indices].tolist()  # [n_kn]
            rows += [
                {"fact_id": fact_id, "relation": fact.relation, "type": kind, "sentence_id": i, "layer": layer,
                 "neuron": index, "activation": a, "masked_word": sentence.masked, "sentence": sentence.text}
                for (layer, index), a in zip(neurons, acts)
            ]
    table = pd.DataFrame(rows, columns=["fact_id", "relation", "type", "sentence_id", "layer", "neuron", "activation",
                                        "masked_word", "sentence"])
    by_relation = mean_activation(table, ["relation", "type"])
    overall = table4_means(by_relation, {fact.relation for fact in bags.values()}, config.relation_mean)
    tag = tag_of(refined)
    counts = table.drop_duplicates(["fact_id", "type", "sentence_id"])["type"].value_counts()
    summary = BingRelSummary(
        model=tag["model"], method=tag["method"], n_facts=table["fact_id"].nunique(), n_relations=table["relation"].nunique(),
        t1=float(overall.get("T1", float("nan"))), t2=float(overall.get("T2", float("nan"))),
        t3=float(overall.get("T3", float("nan"))), n_sentences={t: int(counts.get(t, 0)) for t in TYPES}, seed=config.seed,
    )
    for frame in (table, by_relation):
        frame["model"], frame["method"], frame["seed"] = tag["model"], tag["method"], config.seed
    return BingRelResult(table, by_relation, summary, skips.frame(), config)


def top_bottom_sentences(table: pd.DataFrame, fact_id: str, k: int = 2) -> pd.DataFrame:
    """Table 3: a fact's T1 sentences ranked by the mean activation of its knowledge neurons; the top k
    and the bottom k, with ``rank`` "top" or "bottom". The sentences are shown unmasked (the paper fills
    the blank with the answer for readability)."""
    t1 = table[(table["fact_id"] == fact_id) & (table["type"] == "T1")]
    if t1.empty:
        raise ValueError(f"{fact_id}: no T1 sentence in the table")
    per_sentence = (
        t1.groupby(["sentence_id", "sentence"])["activation"].mean().reset_index().sort_values("activation", ascending=False)
    )
    top, bottom = per_sentence.head(k).assign(rank="top"), per_sentence.tail(k).assign(rank="bottom")
    out = pd.concat([top, bottom[~bottom["sentence_id"].isin(top["sentence_id"])]])
    return out.assign(fact_id=fact_id)[["fact_id", "rank", "sentence_id", "activation", "sentence"]].reset_index(drop=True)
