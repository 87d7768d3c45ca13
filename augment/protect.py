"""What a local augmentation may change: words, and the tokens that must stay as they are.

A text is cut into tokens that keep their character offsets, so a variant is rebuilt from the
source with only its changed words replaced (spacing and punctuation untouched). Only all-lowercase
alphabetic words outside the protected spans, and not stopwords or number words, may change.
Everything else is protected: labelled spans (each kept whole, as one token), stopwords, numbers (in
digits or words) and anything with a digit, words with a capital (names, acronyms, and for safety a
sentence's first word), URLs, e-mail addresses, contractions and hyphenated words, punctuation.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

# NLTK's English stopword list (its corpus is a download, so the list is kept here).
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her
hers herself it its itself they them their theirs themselves what which who whom this that these
those am is are was were be been being have has had having do does did doing a an the and but if or
because as until while of at by for with about against between into through during before after
above below to from up down in out on off over under again further then once here there when where
why how all any both each few more most other some such no nor not only own same so than too very s
t can will just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma
mightn mustn needn shan shouldn wasn weren won wouldn
""".split())

# Numbers written as words are numbers too ("two days" must not become "2 days").
NUMBER_WORDS = frozenset("""
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand
million billion trillion dozen half first second third fourth fifth sixth seventh eighth ninth tenth
twice thrice
""".split())

_CHUNK = re.compile(r"\S+")
_SPLIT = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)  # leading punctuation, the word, trailing


@dataclass(frozen=True, slots=True)
class Token:
    start: int
    end: int
    text: str
    editable: bool


def _merge(spans: Iterable[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted((max(0, s), min(size, e)) for s, e in spans):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _editable(text: str, start: int, end: int) -> bool:
    word = text[start:end]
    # A piece of a word cut by a protected span ("Paris" in "Parisian") is not a word of its own.
    whole = (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum())
    return whole and word.isalpha() and word.islower() and word not in STOPWORDS and word not in NUMBER_WORDS


def tokenize(text: str, protected: Sequence[tuple[int, int]] = ()) -> list[Token]:
    """The text's tokens in order; each protected span (merged where they overlap) is one token."""
    tokens: list[Token] = []
    cursor = 0
    for span_start, span_end in [*_merge(protected, len(text)), (len(text), len(text))]:
        for chunk in _CHUNK.finditer(text, cursor, span_start):
            lead, word, trail = _SPLIT.match(chunk.group()).groups()
            start = chunk.start()
            for i, piece in enumerate((lead, word, trail)):
                if piece:
                    end = start + len(piece)
                    tokens.append(Token(start, end, piece, i == 1 and _editable(text, start, end)))
                    start = end
        if span_end > span_start:
            tokens.append(Token(span_start, span_end, text[span_start:span_end], False))
        cursor = span_end
    return tokens


def rebuild(text: str, tokens: Sequence[Token], words: Sequence[str]) -> str:
    """The text with each token replaced by the word at its position (the gaps between kept)."""
    parts, cursor = [], 0
    for token, word in zip(tokens, words, strict=True):
        parts += [text[cursor:token.start], word]
        cursor = token.end
    parts.append(text[cursor:])
    return "".join(parts)


def protected_spans(text: str, protected: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """Every span a local augmentation must keep: the given ones and the protected words
    (stopwords, numbers, capitalised words...), punctuation aside."""
    return [(t.start, t.end) for t in tokenize(text, protected)
            if not t.editable and any(c.isalnum() for c in t.text)]


def occurrences(term: str, text: str) -> list[tuple[int, int]]:
    """Where ``term`` is in ``text`` as a whole token: "Ann" is not found inside "Annual"."""
    pattern = (r"(?<!\w)" if re.match(r"\w", term) else "") + re.escape(term) + (
        r"(?!\w)" if re.search(r"\w$", term) else "")
    return [(m.start(), m.end()) for m in re.finditer(pattern, text)]


def protected_tokens_intact(source: str, variant: str, protected: Sequence[tuple[int, int]]) -> bool:
    """Whether every protected span's text is still in the variant, as often as the spans need it
    (moved is fine; changed, split or dropped is not)."""
    needed = Counter(source[s:e] for s, e in protected if e > s)
    return all(len(occurrences(term, variant)) >= count for term, count in needed.items())
