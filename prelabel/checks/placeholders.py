"""Template placeholders a weak model copies instead of answering: ``...``, ``<your response>``,
``<paraphrase>``, or the prompt's own example values. Pure functions.

Small models (Gemma 3 270M, tried for real) answer an instruct prompt with the template's
``{"instruction": "...", "response": "..."}`` word for word; unflagged, that became training data.
A text is a placeholder when, once trimmed, it has no word characters (``...``, ``…``, ``-``), is one
short ``<...>`` or ``[...]`` slot, or equals a string value the prompt itself shows as an example.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

_SLOT = re.compile(r"^[<\[{][^<>\[\]{}]{1,40}[>\]}]$")
_WORD = re.compile(r"\w")
# A string value in a JSON example: "key": "value" (the value is what a model might copy).
_EXAMPLE_VALUE = re.compile(r'"[\w ]{1,40}"\s*:\s*"([^"\n]{1,60})"')


def _normal(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def example_values(prompt: str) -> frozenset[str]:
    """The string values the prompt's JSON examples show, normalised."""
    return frozenset(_normal(value) for value in _EXAMPLE_VALUE.findall(prompt or ""))


def is_placeholder(text: str, examples: Iterable[str] = ()) -> bool:
    """Whether ``text`` is a copied placeholder rather than an answer (an empty text is not one:
    that has a flag of its own)."""
    stripped = _normal(text or "")
    if not stripped:
        return False
    if not _WORD.search(stripped) or _SLOT.match(stripped):
        return True
    return stripped in examples
