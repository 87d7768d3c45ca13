"""Reviewed items as the next round's few-shot examples, in the examples file's own format
(``task.examples``). Corrected items teach the most: by default only they go in. The worker never
shows an example to the item it was made from (their texts are identical), so no item sees its own
label. Pure."""
from __future__ import annotations

from typing import Iterable, Mapping

from ..store.base import ReviewRow
from .corrections import ACCEPTED, CORRECTED, REJECTED


def examples(kind: str, instruction_field: str | None, drafts: Mapping[str, dict],
             reviews: Mapping[str, ReviewRow], corrected_only: bool = True) -> Iterable[dict]:
    """One examples-file line per reviewed item (instruct: per passage, its reviewed pairs)."""
    wanted = {CORRECTED} if corrected_only else {CORRECTED, ACCEPTED}
    passages: dict[str, dict] = {}
    for draft_id in sorted(reviews):
        review, draft = reviews[draft_id], drafts.get(draft_id)
        if draft is None or review.verdict == REJECTED or review.verdict not in wanted:
            continue
        if kind == "classify":
            yield {"text": draft["text"], "label": review.label}
        elif kind == "multilabel":
            yield {"text": draft["text"], "labels": list(review.label)}
        elif kind == "ner":
            yield {"text": draft["text"], "spans": [{"start": s["start"], "end": s["end"], "label": s["label"]}
                                                    for s in review.label]}
        elif instruction_field:
            yield {"text": draft["text"], "response": review.label["response"]}
        else:
            source = draft.get("source_id") or draft_id
            entry = passages.setdefault(source, {"text": draft["text"], "pairs": []})
            entry["pairs"].append({"instruction": review.label["instruction"], "response": review.label["response"]})
    yield from passages.values()
