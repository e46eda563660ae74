"""The one registry of the persona dimensions (METHOD.md §1): letter, name, description.

Every other module takes the letters, names and order from here.

    from localpeer.dimensions import DIMS, NAMES, describe, in_order
    DIMS                  # ("A", "T", "E", "C")
    NAMES["T"]            # "trustworthiness"
    in_order({"C", "A"})  # ("A", "C")
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Dimension:
    letter: str
    name: str
    description: str


REGISTRY: tuple[Dimension, ...] = (
    Dimension("A", "anti-sycophancy",
              "keeps a correct position under social pressure and corrects a false premise"),
    Dimension("T", "trustworthiness",
              "accurate, calibrated about what it does not know, safe, and still helpful"),
    Dimension("E", "empathy",
              "notices the person's situation and feelings and answers them with respect"),
    Dimension("C", "creativity",
              "concrete, original, useful ideas beyond the obvious first answer"),
)

DIMS: tuple[str, ...] = tuple(d.letter for d in REGISTRY)
NAMES: dict[str, str] = {d.letter: d.name for d in REGISTRY}
DESCRIPTIONS: dict[str, str] = {d.letter: d.description for d in REGISTRY}


def in_order(letters: Iterable[str]) -> tuple[str, ...]:
    """The given letters in registry order (unknown letters last, alphabetically)."""
    letters = set(letters)
    known = tuple(d for d in DIMS if d in letters)
    return known + tuple(sorted(letters - set(DIMS)))


def describe(letters: Iterable[str] = DIMS) -> str:
    """'A (anti-sycophancy), T (trustworthiness), ...' for messages and help texts."""
    return ", ".join(f"{d} ({NAMES.get(d, d)})" for d in letters)
