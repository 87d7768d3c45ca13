"""Where the mentions a model returned sit in the item's text: character offsets. Pure functions.

Models return entity text, not offsets (they cannot count characters). Offsets are Python str
indices (code points), what Label Studio stores; a span's ``text`` is always ``item[start:end]``.

Rules, in order:
- A mention is looked for exactly first; failing that, ignoring case, Unicode normalisation (NFC:
  "José" written with a combining accent), runs of whitespace and curly quotes, mapped back to the
  original offsets. A match never starts or ends inside a word of a cased script or a number
  ("Ann" is not found in "Annual"), nor inside a character cluster (an accent, an emoji's skin
  tone or joiner). Scripts without case (CJK, Thai) are matched anywhere, as they use no spaces.
- Every occurrence of a returned mention is labelled: models often list an entity once however
  often it appears. When the same mention text comes back with several types ("Jordan" PER, then
  "Jordan" LOC), its occurrences take those types in order; occurrences past the last take the last.
- Longer mentions are placed first, and an occurrence lying inside one already placed is skipped
  ("Müller" returned besides "José Müller" labels the other Müllers, not the one inside "José
  Müller") unless every occurrence does, in which case the model meant the nested entity.
- A span inside a longer span of the same type is dropped as redundant. Any other overlap (two
  types on one stretch, or spans that cross) is kept, both spans, and reported as a conflict for a
  person to settle; choosing one would hide the disagreement.
- A mention not found is dropped and reported.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Sequence

# Marks that continue the character before them: a match may not begin or end next to them.
_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"} | {chr(c) for c in range(0x1F3FB, 0x1F400)}  # ZWJ, VS, skin tones
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u02bc": "'",
                         "\u201c": '"', "\u201d": '"', "\u201e": '"'})


@dataclass(frozen=True, slots=True)
class Mention:
    """What the model returned: an entity's text and type, and the probability it gave them."""

    text: str
    label: str
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    text: str
    label: str
    score: float | None = None

    def as_label(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text, "label": self.label,
                "score": self.score}


@dataclass(frozen=True, slots=True)
class Located:
    spans: list[Span]        # sorted by start, end, label
    missing: list[Mention]   # returned but not in the text
    conflict: bool           # some spans overlap (see the module's rules)


def locate(text: str, mentions: Sequence[Mention]) -> Located:
    by_surface: dict[str, list[Mention]] = {}
    missing: list[Mention] = []
    for mention in mentions:
        surface = mention.text.strip()
        if surface:
            by_surface.setdefault(surface, []).append(mention)
        else:
            missing.append(mention)
    folded: _Folded | None = None
    placed: list[tuple[int, int]] = []
    spans: list[Span] = []
    for surface in sorted(by_surface, key=len, reverse=True):  # stable: equal lengths keep their order
        returned = by_surface[surface]
        found = _exact(text, surface)
        if not found:
            folded = folded or _Folded(text)
            found = folded.find(surface)
        if not found:
            missing.extend(returned)
            continue
        free = [o for o in found if not any(s <= o[0] and o[1] <= e for s, e in placed)]
        for i, (start, end) in enumerate(free or found):
            mention = returned[min(i, len(returned) - 1)]
            spans.append(Span(start, end, text[start:end], mention.label, mention.score))
        placed.extend(free or found)
    spans = _drop_redundant(spans)
    return Located(spans, missing, overlapping(spans))


def overlapping(spans: Sequence[Span]) -> bool:
    """Whether any two spans share a character."""
    ordered = sorted(spans, key=lambda s: (s.start, s.end))
    reach = -1
    for span in ordered:
        if span.start < reach:
            return True
        reach = max(reach, span.end)
    return False


def _drop_redundant(spans: list[Span]) -> list[Span]:
    """Exact repeats, and spans inside a longer one of the same type, go."""
    unique = list({(s.start, s.end, s.label): s for s in spans}.values())
    kept = [s for s in unique
            if not any(o is not s and o.label == s.label and o.start <= s.start and s.end <= o.end
                       for o in unique)]
    return sorted(kept, key=lambda s: (s.start, s.end, s.label))


def _word(char: str) -> bool:
    """A character that continues a word of a cased script or a number."""
    return char.isdigit() or char.lower() != char.upper()


def _continues(char: str) -> bool:
    return char in _JOINERS or unicodedata.combining(char) != 0


def _clean_edges(text: str, start: int, end: int) -> bool:
    if _continues(text[start]) or (end < len(text) and _continues(text[end])):
        return False  # would cut a character cluster
    if start > 0 and _word(text[start - 1]) and _word(text[start]):
        return False
    if end < len(text) and _word(text[end]) and _word(text[end - 1]):
        return False
    return True


def _exact(text: str, surface: str) -> list[tuple[int, int]]:
    found, position = [], text.find(surface)
    while position != -1:
        end = position + len(surface)
        if _clean_edges(text, position, end):
            found.append((position, end))
            position = text.find(surface, end)
        else:
            position = text.find(surface, position + 1)
    return found


def _clusters(text: str):
    """(start, end, folded) for each base character with its marks, or each run of whitespace."""
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        if text[i].isspace():
            while j < n and text[j].isspace():
                j += 1
            yield i, j, " "
        else:
            while j < n and _continues(text[j]):
                j += 1
            yield i, j, unicodedata.normalize("NFC", text[i:j]).casefold().translate(_QUOTES)
        i = j


def _fold(text: str) -> str:
    return "".join(piece for _, _, piece in _clusters(text))


class _Folded:
    """The text folded for a lenient search, with where each folded cluster came from."""

    def __init__(self, text: str) -> None:
        self.text = text
        pieces, self._starts, self._ends = [], {}, {}
        size = 0
        for start, end, piece in _clusters(text):
            self._starts[size] = start
            pieces.append(piece)
            size += len(piece)
            self._ends[size] = end
        self.folded = "".join(pieces)

    def find(self, surface: str) -> list[tuple[int, int]]:
        needle = _fold(surface)
        found, position = [], self.folded.find(needle)
        while position != -1:
            start, end = self._starts.get(position), self._ends.get(position + len(needle))
            if start is not None and end is not None and _clean_edges(self.text, start, end):
                found.append((start, end))
                position = self.folded.find(needle, position + len(needle))
            else:
                position = self.folded.find(needle, position + 1)
        return found
