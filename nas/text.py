"""Wording shared by what the tools print: a count with its noun in the right number."""

from __future__ import annotations


def did_you_mean(name: str, names: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'gdas'?)' for the registered name closest to a misspelt one, or '' when none is close."""
    import difflib

    near = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def count(n: int, noun: str, plural: str | None = None) -> str:
    """"1 epoch", "3 epochs", "0 cells"; ``plural`` for nouns that do not take an s."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def either(names: list[str] | tuple[str, ...]) -> str:
    """"a", "a or b", "a, b or c": the choices a message offers."""
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} or {names[-1]}"
