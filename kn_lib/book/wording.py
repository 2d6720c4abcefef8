"""Small helpers for the sentences the book generates, so that every branch reads right."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 fact", "2 facts" ("1 successful edit", "0 successful edits")."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
