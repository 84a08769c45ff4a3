"""How a count or a list reads in a sentence: "1 trial", "2 trials"; "a, b and c"."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1 (nouns that add an s)."""
    return f"{n} {noun}{'s' * (n != 1)}"


def listed(items: list[str]) -> str:
    """``items`` joined as a sentence lists them: "a", "a and b", "a, b and c"."""
    return ", ".join(items[:-1]) + " and " * (len(items) > 1) + (items[-1] if items else "")
