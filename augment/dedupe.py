"""Dropping variants that add nothing: equal to their source or to any text in the job, or nearly
equal to their source or to a sibling.

Exact duplicates are found by a 64-bit hash of the normalised text (unicode NFKC, case folded,
runs of whitespace made one space), so a million items cost tens of megabytes, not their texts.

A near duplicate has a word-bigram Jaccard similarity to its source or to an earlier variant of the
same source (its siblings) at or above the threshold (``augment.near_duplicate_threshold``,
default 0.9): |A ∩ B| / |A ∪ B| over the sets of adjacent word pairs of the normalised texts, the
start and end of the text counting as words, punctuation ignored. One changed word in ten words
scores about 0.7, one in forty about 0.9; a variant differing only in punctuation scores 1.0.
Variants are compared with their own source and siblings only: against the whole job the check
would cost a scan per variant, and near duplicates across sources are rare and harmless.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable

IDENTICAL_TO_SOURCE = "identical_to_source"
DUPLICATE = "duplicate"
NEAR_DUPLICATE = "near_duplicate"

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _key(normalized: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalized.encode(), digest_size=8).digest(), "big")


def _bigrams(normalized: str) -> set[tuple[str, str]]:
    words = ["\x02", *_WORD.findall(normalized), "\x03"]
    return set(zip(words, words[1:]))


def similarity(a: str, b: str) -> float:
    """Word-bigram Jaccard similarity of two texts (after normalising), 0 to 1."""
    x, y = _bigrams(normalize(a)), _bigrams(normalize(b))
    return len(x & y) / len(x | y)


class Deduper:
    """The job's texts as hashes; ``admit`` says whether a variant is new enough to keep.

    ``admit`` only checks: the caller records a variant it keeps with ``add_existing`` (it may still
    drop it for another reason, such as an entity that cannot be found in it).
    """

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = threshold
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def add_existing(self, text: str) -> None:
        self._seen.add(_key(normalize(text)))

    def admit(self, text: str, *, source: str, siblings: Iterable[str] = ()) -> str | None:
        """None if the variant is kept, else why not: identical_to_source, duplicate or near_duplicate."""
        normalized = normalize(text)
        if normalized == normalize(source):
            return IDENTICAL_TO_SOURCE
        if _key(normalized) in self._seen:
            return DUPLICATE
        mine = _bigrams(normalized)
        for other in (source, *siblings):
            theirs = _bigrams(normalize(other))
            if len(mine & theirs) >= self.threshold * len(mine | theirs):
                return NEAR_DUPLICATE
        return None
