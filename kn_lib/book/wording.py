"""Small helpers for the sentences the book generates, so that every branch reads right."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 fact", "2 facts" ("1 successful edit", "0 successful edits")."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def search_end(reason: str) -> str:
    """How the adaptive search for p ended (``refine.ThresholdSearch.reason``), as a phrase that follows
    "the search ended with": "the mean count in range", "the official limit of 6 evaluations"."""
    if reason.endswith(" evaluations"):
        return f"the official limit of {reason.split()[0]} evaluations, the count still out of range"
    if reason.startswith("p reached "):
        return f"p reaching {reason.rsplit(' ', 1)[1]}, the count still out of range"
    phrases = {"in range": "the mean count in range", "overshoot": "the count jumping over the range",
               "non-empty kept": "no neuron at its last p, so the last p that gave neurons was kept",
               "no facts": "no usable fact"}
    return phrases.get(reason, f"outcome “{reason}”")
