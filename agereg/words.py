"""How a count reads in a sentence: "1 trial", "2 trials"."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (nouns that add an s)."""
    return f"{n} {noun}{'s' * (n != 1)}"
