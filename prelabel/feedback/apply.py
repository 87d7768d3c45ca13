"""The next round's dataset: reviewed labels where they exist, and (with a threshold) only the
unreviewed drafts confident enough to accept unseen. A pure function over records."""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping

from ..checks.flags import LOW_CONFIDENCE, NO_CONFIDENCE
from ..store.base import ReviewRow
from .corrections import REJECTED

_CONFIDENCE_FLAGS = (LOW_CONFIDENCE, NO_CONFIDENCE)


def with_reviews(records: Iterable[dict], reviews: Mapping[str, ReviewRow],
                 accept_above: float | None = None) -> Iterator[dict]:
    """Each record as the export should write it.

    A reviewed draft takes the reviewer's label (a rejected pair: none) and is no longer waiting for
    review; ``review`` says what the reviewer did and ``draft_label`` keeps what the model said.
    With ``accept_above``, an unreviewed draft is accepted only at or above that confidence: the
    threshold takes the place of ``review.min_confidence`` (its other flags still hold it back).
    The id and ``source_id`` never change, so the fine-tuning split puts every source where it was.
    """
    for record in records:
        review = reviews.get(record["id"])
        if review is not None:
            record = {**record, "label": None if review.verdict == REJECTED else review.label,
                      "draft_label": record.get("label"), "needs_review": False,
                      "review": {"verdict": review.verdict, "reviewer": review.reviewer,
                                 "updated_at": review.updated_at}}
        elif accept_above is not None:
            confidence = record.get("confidence")
            other = [f for f in record.get("flags") or [] if f not in _CONFIDENCE_FLAGS]
            below = confidence is None or confidence < accept_above
            record = {**record, "needs_review": below or bool(other),
                      "flags": other + ([LOW_CONFIDENCE if confidence is not None else NO_CONFIDENCE]
                                        if below else [])}
        yield record
