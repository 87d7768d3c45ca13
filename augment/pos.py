"""The part of speech a word has in its sentence, offline, without a tagger model.

No tagger can be downloaded at run time, and none that PyPI ships is both light and reliable, so a
heuristic decides from three things: the parts of speech WordNet's morphology allows for the word
("invoices": noun or verb), the word just before it, and the word just after it:
- after "I/you/we/they", "to", a modal ("will", "can"...), a "do" form or "please": a verb;
  after "he/she/it", an "-s" form is a verb;
- after "a/the/my/this..." or a preposition: an adjective when the next word can be a noun, else a
  noun ("the new update", "my invoice");
- a verb's "-ing" form is a verb when no determiner comes before it ("still waiting");
- after "is/was/be...", "very/too/so...": an adjective; else (a participle: "was damaged") a verb;
- after "have/has/had": a verb for a past form, else a noun;
- after a word that is mostly an adjective: a noun ("the fast reply");
- otherwise, or when the cue's part of speech is not one the word can have: the word's most
  frequent part of speech by WordNet's sense counts (``wordnet.pos_guess``), among those allowed.
A word that only "-ly" ends and WordNet knows as an adverb is one. Call with ``wordnet.LOCK`` held.
"""
from __future__ import annotations

from functools import lru_cache

from . import wordnet

NOUN, VERB, ADJ, ADV = "n", "v", "a", "r"

SUBJECTS = frozenset("i you we they".split())
THIRD_PERSON = frozenset("he she it".split())
VERB_CUES = frozenset("""to will would can could should shall may might must please do does did don't
doesn't didn't won't wouldn't can't cannot couldn't shouldn't let's i'll we'll you'll they'll i'd we'd
you'd they'd""".split())
NOUN_CUES = frozenset("""a an the my your our their his her its this that these those every each some
any no another of in on for with at by from about into through over under after before without between
against during per via""".split())
BE = frozenset("is are was were be been being am isn't aren't wasn't weren't seems seemed looks looked "
               "feels felt".split())
DEGREE = frozenset("very too so really quite extremely pretty rather more most less least".split())
HAVE = frozenset("have has had having haven't hasn't hadn't i've we've you've they've".split())
AUXILIARIES = HAVE | BE | frozenset("get gets got".split())


@lru_cache(maxsize=100_000)
def allowed(word: str) -> tuple[str, ...]:
    """The parts of speech WordNet knows the word in (inflected forms through its morphology)."""
    wn = wordnet.reader()
    return tuple(pos for pos in (NOUN, VERB, ADJ, ADV) if wn._morphy(word, pos))


def _past_form(word: str) -> bool:
    return word.endswith(("ed", "en")) or (VERB in allowed(word) and word not in wordnet.reader()._morphy(word, VERB))


def in_context(word: str, before: str | None, after: str | None) -> str | None:
    """``n``, ``v``, ``a`` or ``r`` for ``word`` between the words ``before`` and ``after``
    (None at the ends of the text), or None for a word WordNet does not know."""
    word = word.lower()
    can = allowed(word)
    if not can:
        return None
    if len(can) == 1:
        return can[0]
    before = before.lower() if before else None
    cue = _cue(word, can, before, after.lower() if after else None)
    if cue in can:
        return cue
    guess = wordnet.pos_guess(word)
    return guess if guess in can else can[0]


def _cue(word: str, can: tuple[str, ...], before: str | None, after: str | None) -> str | None:
    if word.endswith("ly") and ADV in can:
        return ADV
    if before in SUBJECTS or before in VERB_CUES:
        return VERB
    if before in THIRD_PERSON and word.endswith("s"):
        return VERB
    if before in NOUN_CUES:
        if ADJ in can and after is not None and NOUN in allowed(after):
            return ADJ
        return NOUN if NOUN in can else ADJ
    if VERB in can and word.endswith("ing") and word not in wordnet.reader()._morphy(word, VERB):
        return VERB  # "still waiting": a verb's -ing form, unless a determiner made it a noun
    if before in BE or before in DEGREE:
        return ADJ if ADJ in can else VERB if before in BE else ADV
    if before in HAVE:
        return VERB if _past_form(word) else NOUN
    if before is not None and NOUN in can and wordnet.pos_guess(before) == ADJ:
        return NOUN  # "the fast reply"
    return None
