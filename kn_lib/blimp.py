"""BLiMP agreement minimal pairs (Warstadt et al., TACL 2020), the data Niu et al. (ICLR 2024) localised
with knowledge neurons: the 8 determiner-noun and the 4 subject-verb agreement paradigms.

Each row is a minimal pair read in one of two forms (``form``):

* ``one_prefix`` (``*_1`` paradigms): one prefix, two next words: ``prefix_good == prefix_bad`` is
  ``one_prefix_prefix``, ``word_good`` / ``word_bad`` are ``one_prefix_word_good`` / ``_bad``;
* ``two_prefix`` (``*_2`` paradigms): two prefixes, one next word: ``prefix_good`` / ``prefix_bad`` are
  ``two_prefix_prefix_good`` / ``_bad``, ``word_good == word_bad`` is ``two_prefix_word``.

Grouping. Knowledge neurons are found per *fact* from the fact's paraphrases; here the unit playing a
fact's role is ``group`` and its minimal pairs play the paraphrases:

* determiner-noun: the demonstrative of the good sentence and the noun number it requires, e.g.
  ``"this+singular"`` or ``"those+plural"`` (4 groups). The demonstrative is the *last* of
  this / that / these / those in ``prefix_good`` (lower-cased): the ``with_adj`` paradigms put an adjective
  after it ("Cynthia scans these hard"), so it is not always the prefix's last word.
* subject-verb: ``"singular-subject"`` or ``"plural-subject"``, the number required by the verb of the
  good sentence (``one_prefix_word_good``, or ``two_prefix_word``): an auxiliary by table (is / was /
  has / does and their n't forms are singular; are / were / have / do and theirs plural), a lexical verb
  (BLiMP's are present tense) is singular when it ends in -s but not -ss ("references", not "discuss").
  On the 4,000 rows this gives every ``_1`` pair a good and a bad verb of opposite numbers, and agrees
  with the subject noun's number wherever that noun also occurs with an auxiliary, except for 12 rows of
  the ``_2`` paradigms whose "good" sentence itself disagrees ("The girls irritates Karen.", "The man
  singing ..."): BLiMP's own label noise, kept as is and grouped by their verb.

Files are read through ``data.DataSource`` (mirror or pinned download, sha256-checked), from
alexwarstadt/blimp at ``sources.BLIMP_COMMIT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

from .data import DataError, DataSource, read_jsonl

DETERMINER_NOUN: tuple[str, ...] = (
    "determiner_noun_agreement_1", "determiner_noun_agreement_2",
    "determiner_noun_agreement_irregular_1", "determiner_noun_agreement_irregular_2",
    "determiner_noun_agreement_with_adjective_1", "determiner_noun_agreement_with_adj_2",
    "determiner_noun_agreement_with_adj_irregular_1", "determiner_noun_agreement_with_adj_irregular_2",
)
SUBJECT_VERB: tuple[str, ...] = (
    "regular_plural_subject_verb_agreement_1", "regular_plural_subject_verb_agreement_2",
    "irregular_plural_subject_verb_agreement_1", "irregular_plural_subject_verb_agreement_2",
)
PARADIGMS: tuple[str, ...] = DETERMINER_NOUN + SUBJECT_VERB

DEMONSTRATIVES = {"this": "singular", "that": "singular", "these": "plural", "those": "plural"}
SINGULAR_AUXILIARIES = frozenset({"is", "was", "has", "does", "isn't", "wasn't", "hasn't", "doesn't"})
PLURAL_AUXILIARIES = frozenset({"are", "were", "have", "do", "aren't", "weren't", "haven't", "don't"})

Form = Literal["one_prefix", "two_prefix"]


@dataclass(frozen=True)
class MinimalPair:
    """One BLiMP pair as two (prefix, next word) continuations, the good and the bad one."""

    paradigm: str
    pair_id: int  # BLiMP's pairID, unique within the paradigm
    form: Form
    prefix_good: str
    prefix_bad: str
    word_good: str
    word_bad: str
    group: str  # the fact-like unit (module docstring)


def relpath_of(name: str) -> str:
    """The mirror path of a paradigm's file."""
    return f"blimp/data/{name}.jsonl"


def determiner_group(prefix_good: str) -> str:
    """``"<demonstrative>+<number>"``: the last this / that / these / those of the good prefix."""
    words = [w.strip(".,;:!?\"'").lower() for w in prefix_good.split()]
    found = [w for w in words if w in DEMONSTRATIVES]
    if not found:
        raise ValueError(f"{prefix_good!r}: no demonstrative (this, that, these, those)")
    return f"{found[-1]}+{DEMONSTRATIVES[found[-1]]}"


def verb_number(verb: str) -> str:
    """``"singular"`` or ``"plural"``: the subject number a present-tense verb (or auxiliary) agrees with."""
    first = verb.split()[0].lower() if verb.split() else ""
    if first in SINGULAR_AUXILIARIES:
        return "singular"
    if first in PLURAL_AUXILIARIES:
        return "plural"
    return "singular" if first.endswith("s") and not first.endswith("ss") else "plural"


def _pair(name: str, row: dict, where: str) -> MinimalPair:
    one = name.endswith("_1")
    keys = (("one_prefix_prefix", "one_prefix_prefix", "one_prefix_word_good", "one_prefix_word_bad") if one else
            ("two_prefix_prefix_good", "two_prefix_prefix_bad", "two_prefix_word", "two_prefix_word"))
    missing = [k for k in dict.fromkeys((*keys, "pairID")) if not isinstance(row.get(k), str)]
    if missing:
        raise DataError(f"{where}: no {', '.join(missing)} (a {name} row needs them)")
    prefix_good, prefix_bad, word_good, word_bad = (row[k] for k in keys)
    try:
        group = determiner_group(prefix_good) if name in DETERMINER_NOUN else f"{verb_number(word_good)}-subject"
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    return MinimalPair(name, int(row["pairID"]), "one_prefix" if one else "two_prefix",
                       prefix_good, prefix_bad, word_good, word_bad, group)


def _check_names(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [n for n in names if n not in PARADIGMS]
    if unknown:
        raise ValueError(f"unknown BLiMP paradigm(s) {', '.join(map(repr, unknown))}; known: {', '.join(PARADIGMS)}")
    return names


def load_paradigm(name: str, source: DataSource | None = None) -> list[MinimalPair]:
    """Every pair of one paradigm, in file order."""
    (name,) = _check_names([name])
    path = (source or DataSource()).path(relpath_of(name))
    return [_pair(name, row, f"{path}: row {i}") for i, row in enumerate(read_jsonl(path), start=1)]


def load_pairs(names: Iterable[str] | None = None, source: DataSource | None = None) -> list[MinimalPair]:
    """The pairs of several paradigms (default: all 12 of ``PARADIGMS``), paradigm after paradigm."""
    source = source or DataSource()
    return [pair for name in _check_names(PARADIGMS if names is None else names) for pair in load_paradigm(name, source)]

