"""BINGREL (Dai et al. 2022, section 4.6): web sentences per fact, and the three kinds of masked prompt.

For every fact of ``query_pairs.json`` the upstream file ``final_distant_allbags_<rel>_new.json`` holds
one entry, in the same order (entry i is fact ``"<rel>/<i>"``), with

* ``th_bags``: up to ten sentences containing the head and the tail (the paper's T1 source),
* ``h_bags``: up to ten sentences containing the head only (the T2 source).

This module reads and checks those files and masks sentences as text, independently of any model:

* T1: the first whole-word occurrence of the tail, outside any occurrence of the head, is masked;
* T2 and T3: one random word is masked (T3 sentences are drawn from all bags, as many as T1).

Masking is textual (a span of the sentence); how a model reads the masked position is the
experiment's business (``kn_lib.experiments.bingrel_activation``). The rules follow the official
scripts (``4_check_weights_distant.py``): words are space-separated, the random word is one of the
first 50, a word overlapping the head is never masked. One deliberate difference: the first word is
never the random word, so that a causal model always has a prefix to read and the choice of word does
not depend on the model family.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable

from .data import DataError, DataSource, load_facts, read_json, relation_ids

BAGS_FILE = "knowledge-neurons/BingDistantTREx/final/final_distant_allbags_{relation}_new.json"
MAX_WORDS = 50  # the official scripts pick the random word among the first 50


@dataclass(frozen=True)
class FactBags:
    """The BINGREL sentences of one fact."""

    fact_id: str
    relation: str
    subject: str  # the head entity
    object: str  # the tail entity
    th_bags: tuple[str, ...]  # sentences containing head and tail
    h_bags: tuple[str, ...]  # sentences containing only the head


@dataclass(frozen=True)
class MaskedSentence:
    """A sentence with one span masked: ``text[start:end]`` is the word the model must fill."""

    text: str
    start: int
    end: int

    @property
    def prefix(self) -> str:
        return self.text[: self.start]

    @property
    def suffix(self) -> str:
        return self.text[self.end :]

    @property
    def masked(self) -> str:
        return self.text[self.start : self.end]


def load_bags(relations: Iterable[str] | None = None, source: DataSource | None = None) -> dict[str, FactBags]:
    """The BINGREL bags of the given relations (default: all 34), keyed by fact id.

    Each file must be a list with one ``{"th_bags": [...], "h_bags": [...]}`` entry per fact of
    ``query_pairs.json``; anything else is a ``DataError`` naming the file and the entry.
    """
    source = source or DataSource()
    rels = list(relations) if relations is not None else relation_ids(source)
    facts = load_facts(rels, source)
    by_relation: dict[str, list[dict]] = {}
    for row in facts:
        by_relation.setdefault(row["relation"], []).append(row)
    out: dict[str, FactBags] = {}
    for rel in rels:
        path = source.path(BAGS_FILE.format(relation=rel))
        entries = read_json(path)
        rows = by_relation.get(rel, [])
        if not isinstance(entries, list):
            raise DataError(f"{path}: expected a list with one entry per fact")
        if len(entries) != len(rows):
            raise DataError(f"{path}: {len(entries)} entries for {len(rows)} facts of {rel} in query_pairs.json")
        for i, (entry, fact) in enumerate(zip(entries, rows)):
            if not (isinstance(entry, dict) and {"th_bags", "h_bags"} <= entry.keys()):
                raise DataError(f"{path}: entry {i} needs 'th_bags' and 'h_bags'")
            for key in ("th_bags", "h_bags"):
                if not (isinstance(entry[key], list) and all(isinstance(s, str) for s in entry[key])):
                    raise DataError(f"{path}: entry {i}: {key!r} must be a list of strings")
            out[fact["fact_id"]] = FactBags(
                fact["fact_id"], rel, fact["subject"], fact["object"], tuple(entry["th_bags"]), tuple(entry["h_bags"])
            )
    return out


def _head_spans(sentence: str, head: str | None) -> list[tuple[int, int]]:
    if not head:
        return []
    return [(m.start(), m.end()) for m in re.finditer(re.escape(head), sentence)]


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < b and a < end for a, b in spans)


def mask_tail(sentence: str, head: str, tail: str) -> MaskedSentence | None:
    """T1: mask the first occurrence of the tail as a whole word (no letter on either side), skipping
    occurrences inside the head (e.g. tail "Brody" in head "Brody Raion"). ``None`` when there is none."""
    heads = _head_spans(sentence, head)
    for m in re.finditer(rf"(?<![a-zA-Z]){re.escape(tail)}(?![a-zA-Z])", sentence):
        if not _overlaps(m.start(), m.end(), heads):
            return MaskedSentence(sentence, m.start(), m.end())
    return None


def mask_random_word(
    sentence: str, rng: random.Random, head: str | None = None, max_words: int = MAX_WORDS
) -> MaskedSentence | None:
    """T2 / T3: mask one space-separated word, drawn uniformly from words 2..``max_words`` that do not
    overlap the head. ``None`` when no word qualifies (e.g. a one-word sentence)."""
    heads = _head_spans(sentence, head)
    words = [m.span() for m in re.finditer(r"\S+", sentence)][:max_words]
    candidates = [(a, b) for a, b in words[1:] if not _overlaps(a, b, heads)]
    if not candidates:
        return None
    start, end = rng.choice(candidates)
    return MaskedSentence(sentence, start, end)

