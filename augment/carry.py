"""Carrying NER spans over to a variant: the same entity texts, found again at their new offsets.

Each span's text is looked for as a whole token (``Ann`` is not found inside ``Annual``). Spans with
the same text take that text's occurrences in order: the first labelled "Paris" the first "Paris" of
the variant. Given the source, a labelled mention keeps its rank among all mentions of its text
(the second "Apple", not the first, when only the second was labelled), provided the variant has as
many mentions as the source. Longer spans are placed first and occurrences never overlap, so "York"
is not found inside an already placed "New York". A variant in which any span cannot be placed
gets None: it is dropped and counted, never carried with a wrong label.
"""
from __future__ import annotations

from collections import defaultdict

from .protect import occurrences


def _free(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return all(span[1] <= s or span[0] >= e for s, e in taken)


def relocate_spans(spans: list[dict], variant: str, source: str | None = None) -> list[dict] | None:
    """The spans with ``start``/``end`` moved to where their ``text`` is in the variant (other keys
    kept), ordered by position; None if any cannot be found."""
    by_text: dict[str, list[dict]] = defaultdict(list)
    for span in sorted(spans, key=lambda s: s["start"]):
        if not span["text"]:
            return None
        by_text[span["text"]].append(span)
    taken: list[tuple[int, int]] = []
    placed: list[dict] = []
    for term in sorted(by_text, key=len, reverse=True):
        wanted = by_text[term]
        found = occurrences(term, variant)
        picks = None
        if source is not None:
            before = [start for start, _ in occurrences(term, source)]
            if len(before) == len(found) and all(s["start"] in before for s in wanted):
                picks = [found[before.index(s["start"])] for s in wanted]
        if picks is None or not all(_free(p, taken) for p in picks):
            picks = [occ for occ in found if _free(occ, taken)][:len(wanted)]
        if len(picks) < len(wanted):
            return None
        for span, (start, end) in zip(wanted, picks):
            taken.append((start, end))
            placed.append({**span, "start": start, "end": end})
    return sorted(placed, key=lambda s: s["start"])
