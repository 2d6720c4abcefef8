"""The nonsense-prompt null (KLoB's unbiasedness probe, Ju & Zhang 2023, arXiv 2309.16535; beyond the paper).

A method that localises a *fact* should find little for prompts that do not ask it. For each usable
prompt of a fact we build a nonsense prompt of the same length: every token that is not a special token
(begin-of-text, the mask) is replaced by a random whole-word token of the vocabulary, seeded per prompt,
never one of the subject's or the answer's words nor the answer's token; the answer position and the
answer stay. The unchanged pipeline then runs on the nonsense prompts: integrated gradients of p(answer)
(the paper's, m = 20), coarse sets at t x the prompt's maximum, refinement with the relation's own p
from the fact's real refinement (the official rule):

    refined_nonsense = { n : count of nonsense prompts whose coarse set holds n  >=  max(p n_prompts, 3) }

and is compared with the fact's committed refined set: how many neurons the nonsense prompts give, and
how many of them are the fact's own (``shared``). Finding as many for gibberish would say the pipeline
localises the answer token, not the fact.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import pandas as pd
import torch

from ..adapters import EncodedPrompt, ModelAdapter
from ..attribution import IGConfig, integrated_gradients_many
from ..refine import Neuron, coarse_neurons, refine_fact
from .evaluation import Prompt, seeded_rng

_MARKERS = ("Ġ", "▁")  # BPE / SentencePiece word-start markers


@dataclass(frozen=True)
class NonsenseConfig:
    ig: IGConfig = IGConfig()
    threshold: float = 0.2  # coarse t (the paper's)
    share_rule: str = "official"
    min_count: int = 3
    seed: int = 0


@lru_cache(maxsize=4)
def _word_tokens(tokenizer) -> tuple[tuple[int, str], ...]:
    """(id, word) of every whole-word token: lowercase ASCII letters, at least 3 of them, and, in a vocabulary
    with word-start markers, one that starts a word."""
    vocab = tokenizer.get_vocab()
    marked = any(t[:1] in _MARKERS for t in list(vocab)[:5000])
    special = set(tokenizer.all_special_ids)
    out = []
    for token, index in vocab.items():
        if index in special or (marked and token[:1] not in _MARKERS):
            continue
        word = token[1:] if marked else token
        if re.fullmatch(r"[a-z]{3,}", word):
            out.append((index, word))
    return tuple(sorted(out))


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def nonsense_prompt(adapter: ModelAdapter, prompt: EncodedPrompt, subject: str, answer: str, rng: random.Random) -> EncodedPrompt:
    """``prompt`` with every non-special token but the answer position replaced by a random whole-word
    token (module docstring); same length, answer position and answer token."""
    banned = _words(subject) | _words(answer)
    pool = [(i, w) for i, w in _word_tokens(adapter.tokenizer) if w not in banned and i != prompt.target_id]
    if not pool:
        raise ValueError("the vocabulary has no whole-word token to build a nonsense prompt from")
    special = set(adapter.tokenizer.all_special_ids)
    ids = prompt.input_ids.clone()
    for position, token in enumerate(prompt.input_ids.tolist()):
        if token in special or (position == prompt.answer_pos and adapter.family == "masked"):
            continue
        ids[position] = rng.choice(pool)[0]
    return EncodedPrompt(ids, prompt.answer_pos, prompt.target_id, adapter.tokenizer.decode(ids))


def nonsense_null(adapter: ModelAdapter, prompts_by_fact: Mapping[str, Sequence[Prompt]], facts: Mapping[str, Mapping],
                  refined_by_fact: Mapping[str, Sequence[Neuron]], p_by_relation: Mapping[str, float],
                  config: NonsenseConfig = NonsenseConfig(), progress=None) -> pd.DataFrame:
    """One row per fact: its prompts, the relation's p, the refined sets' sizes on real (committed) and
    nonsense prompts, their overlap, and p(answer) after the nonsense prompts."""
    rows = []
    for fact_id, prompts in prompts_by_fact.items():
        fact = facts[fact_id]
        made = [nonsense_prompt(adapter, p.encoded, fact["subject"], fact["object"],
                                seeded_rng(config.seed, f"{fact_id}/{p.template_id}/nonsense")) for p in prompts]
        scores = integrated_gradients_many(adapter, made, config=config.ig)
        coarse = [coarse_neurons(s, config.threshold) for s in scores]
        p = float(p_by_relation[fact["relation"]])
        found = refine_fact(coarse, p, config.share_rule, config.min_count)
        real = set(map(tuple, refined_by_fact.get(fact_id, [])))
        with torch.no_grad():
            p_answer = [adapter.answer_probability(m) for m in made]
        rows.append({"fact_id": fact_id, "relation": fact["relation"], "n_prompts": len(prompts), "p": p,
                     "n_refined_real": len(real), "n_refined_nonsense": len(found), "n_shared": len(found & real),
                     "mean_coarse_nonsense": sum(map(len, coarse)) / len(coarse), "p_answer_nonsense": sum(p_answer) / len(p_answer),
                     "example": made[0].text})
        if progress is not None:
            progress(1)
    return pd.DataFrame(rows)
