"""Putting a synonym in the form of the word it replaces: "loves" -> "enjoys", "invoices" -> "bills".

The form of the word comes from its base (WordNet's morphology): a noun's plural; a verb's third
person singular (-s), its -ing form, or its past (-ed, or an irregular form such as "went"). The
synonym gets the same form from WordNet's exception lists (irregular forms and doubled consonants:
"buy" -> "bought", "stop" -> "stopped") or else the regular English rules, and the result must
lead back to the synonym through WordNet's morphology. Where the form cannot be told apart, the
synonym is not used: an irregular verb with two past forms ("take": "took", "taken"), an irregular
participle (the exception lists do not say which form it is), and comparatives and superlatives
("bigger", "best"). Call with ``wordnet.LOCK`` held.
"""
from __future__ import annotations

from functools import lru_cache

from . import wordnet

BASE, PLURAL, THIRD_PERSON, ING, PAST, PARTICIPLE = "base", "plural", "3sg", "ing", "past", "participle"
_VOWELS = set("aeiou")


def form_of(word: str, base: str, pos: str, after_auxiliary: bool = False) -> str | None:
    """Which form of ``base`` the word is, or None for one that is not handled. A past form after
    "have" or "be" (``after_auxiliary``) is a participle: "has arrived" -> "has come", not "came"."""
    if word == base:
        return BASE
    if pos == "n":
        return PLURAL
    if pos == "v":
        if word.endswith("ing"):
            return ING
        if word.endswith("s"):
            return THIRD_PERSON
        return PARTICIPLE if after_auxiliary else PAST
    return None  # comparatives and superlatives (adjectives and adverbs)


@lru_cache(maxsize=4)
def _irregular(pos: str) -> dict[str, list[str]]:
    """Base form -> its inflected forms listed in WordNet's exception file for ``pos``."""
    forms: dict[str, list[str]] = {}
    for inflected, bases in wordnet.reader()._exception_map[pos].items():
        for base in bases:
            forms.setdefault(base, []).append(inflected)
    return forms


def _sibilant(word: str) -> bool:
    return word.endswith(("s", "x", "z", "ch", "sh"))


def _consonant_y(word: str) -> bool:
    return len(word) > 1 and word[-1] == "y" and word[-2] not in _VOWELS


def _doubles(word: str) -> bool:
    """A one-syllable word ending consonant-vowel-consonant doubles it: "stop" -> "stopped"."""
    syllables = sum(1 for i, c in enumerate(word) if c in _VOWELS and (i == 0 or word[i - 1] not in _VOWELS))
    return (syllables == 1 and len(word) >= 3 and word[-1] not in _VOWELS | set("wxy")
            and word[-2] in _VOWELS and word[-3] not in _VOWELS)


def _regular(base: str, form: str, pos: str) -> str:
    if form in (PLURAL, THIRD_PERSON):
        if _consonant_y(base):
            return base[:-1] + "ies"
        if _sibilant(base) or (pos == "v" and base.endswith("o") and base[-2:-1] not in _VOWELS):
            return base + "es"
        return base + "s"
    if form == ING:
        if base.endswith("ie"):
            return base[:-2] + "ying"
        if base.endswith("e") and not base.endswith(("ee", "oe", "ye")) and len(base) > 2:
            return base[:-1] + "ing"
        return base + base[-1] + "ing" if _doubles(base) else base + "ing"
    if base.endswith("e"):  # PAST, PARTICIPLE
        return base + "d"
    if _consonant_y(base):
        return base[:-1] + "ied"
    return base + base[-1] + "ed" if _doubles(base) else base + "ed"


def _listed(base: str, form: str, pos: str) -> str | None | bool:
    """The exception list's form, None when it lists none, False when it cannot tell which."""
    forms = _irregular(pos).get(base, [])
    if form in (PLURAL, THIRD_PERSON):
        forms = [f for f in forms if f.endswith("s")] if pos == "v" else forms
    elif form == ING:
        forms = [f for f in forms if f.endswith("ing")]
    else:
        forms = [f for f in forms if not f.endswith(("s", "ing"))]
    if form == PARTICIPLE:  # the listed forms do not say which is the participle: only "-ed" ones are safe
        return (forms[0] if all(f.endswith("ed") for f in forms) else False) if forms else None
    if not forms:
        return None
    if len(set(forms)) > 1 and not all(f.endswith("ed") for f in forms):  # "took" or "taken"
        return False
    return forms[0]


@lru_cache(maxsize=100_000)
def inflect(base: str, form: str, pos: str) -> str | None:
    """``base`` in ``form`` as ``pos``, or None when it cannot be made with confidence."""
    if form == BASE:
        return base
    listed = _listed(base, form, pos)
    if listed is False:
        return None
    made = listed or _regular(base, form, pos)
    return made if base in wordnet.reader()._morphy(made, pos) else None
