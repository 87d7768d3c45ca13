"""Which WordNet lemmas may replace a word: its frequent senses, single words, nothing vulgar.

A word's senses in one part of speech are ranked by WordNet's sense counts (how often each sense
was tagged in the SemCor corpus, ``index.sense``). Only senses that hold at least ``SENSE_SHARE``
of the word's tagged occurrences are used; a word never tagged is used only when it has one sense
(nothing to confuse). Within such a sense a lemma replaces the word only when it:
- is one lower-case word of letters (no "roll_in_the_hay", "make-believe", names or numbers);
- was itself tagged in that sense, in at least ``CANDIDATE_SHARE`` of its own tagged uses in that
  part of speech ("account" is a sense of "invoice", never tagged so: it would read as a user
  account; "bushel" has "fix" as its only verb sense, but that sense was never tagged), and tagged
  ``MIN_TAGGED`` times at least in all (rarer words read oddly: "bringing" for "delivery");
- is not in ``blocklist.txt`` (a word, or a whole synset), and has no sense WordNet marks as
  obscene, a slur or disparaging; and the sense is not marked as slang, colloquial or the like
  (WordNet's usage domains).
Every lookup is made with ``wordnet.LOCK`` held.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from . import wordnet

SENSE_SHARE = 0.25
CANDIDATE_SHARE = 0.1
MIN_TAGGED = 5  # a synonym tagged fewer times in all (in that part of speech) is too rare to read naturally
BLOCKLIST = Path(__file__).with_name("blocklist.txt")

# A sense with one of these usage domains is not plain usage; a lemma with a sense in the first
# group is never used at all (its other senses carry the connotation).
_OFFENSIVE = frozenset({"obscenity.n.02", "ethnic_slur.n.01", "disparagement.n.01"})
_MARKED = _OFFENSIVE | {
    "slang.n.02", "colloquialism.n.01", "euphemism.n.01", "street_name.n.02", "archaism.n.01",
    "dialect.n.01", "regionalism.n.01", "african_american_vernacular_english.n.01", "idiom.n.04",
    "irony.n.03", "trope.n.01", "wit.n.01", "synecdoche.n.01", "trademark.n.02", "trade_name.n.01",
    "abbreviation.n.01", "acronym.n.01", "french.n.01", "yiddish.n.01", "formality.n.03"}


@lru_cache(maxsize=1)
def blocklist() -> tuple[frozenset[str], frozenset[str]]:
    """(blocked words, blocked synset names) from ``blocklist.txt``."""
    words, synsets = set(), set()
    for line in BLOCKLIST.read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip().lower()
        if entry:
            (synsets if "." in entry else words).add(entry)
    return frozenset(words), frozenset(synsets)


@lru_cache(maxsize=1)
def _sense_counts() -> dict[str, int]:
    """Tagged occurrences per sense key (only the senses ever tagged)."""
    import nltk

    counts: dict[str, int] = {}
    with nltk.data.find("corpora/wordnet/index.sense").open() as lines:
        for raw in lines:
            key, _offset, _number, tagged = raw.decode("utf-8").split()
            if tagged != "0":
                counts[key] = int(tagged)
    return counts


def _count(lemma) -> int:
    return _sense_counts().get(lemma.key(), 0)


def _own(synset, word: str):
    return next((lemma for lemma in synset.lemmas() if lemma.name().lower() == word), None)


def _senses(word: str, pos: str) -> list:
    wn = wordnet.reader()
    return [s for s in wn.synsets(word, pos) if _own(s, word) is not None]


def _tagged(word: str, pos: str) -> int:
    return sum(_count(_own(s, word)) for s in _senses(word, pos))


def frequent_senses(word: str, pos: str) -> list:
    """The senses of the base form ``word`` in ``pos`` that fit most uses of it (see the module)."""
    senses = _senses(word, pos)
    counts = [_count(_own(s, word)) for s in senses]
    total = sum(counts)
    if total == 0:
        return senses if len(senses) == 1 else []
    return [s for s, c in zip(senses, counts) if c >= SENSE_SHARE * total]


def _plain_word(name: str) -> bool:
    return name.isalpha() and name.islower() and name.isascii()


@lru_cache(maxsize=50_000)
def offensive(word: str) -> bool:
    """Blocklisted, or any sense of it marked obscene, a slur or disparaging."""
    if word in blocklist()[0]:
        return True
    return any({d.name() for d in s.usage_domains()} & _OFFENSIVE for s in wordnet.reader().synsets(word))


def _usable_sense(synset) -> bool:
    return synset.name() not in blocklist()[1] and not {d.name() for d in synset.usage_domains()} & _MARKED


@lru_cache(maxsize=100_000)
def synonyms(word: str, pos: str) -> tuple[str, ...]:
    """Base forms that may replace the base form ``word`` used as ``pos`` (n, v, a, r), most
    frequent sense first; empty when none fits."""
    found: dict[str, None] = {}
    for synset in frequent_senses(word, pos):
        if not _usable_sense(synset):
            continue
        for lemma in synset.lemmas():
            name = lemma.name()
            if name == word or not _plain_word(name) or name in found or offensive(name):
                continue
            tagged = _tagged(name, pos)
            if tagged >= MIN_TAGGED and _count(lemma) >= max(1, CANDIDATE_SHARE * tagged):
                found[name] = None
    return tuple(found)
