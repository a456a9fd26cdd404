"""Wording shared by what the tools print: a count with its noun in the right number."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """"1 epoch", "3 epochs", "0 cells"; ``plural`` for nouns that do not take an s."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
