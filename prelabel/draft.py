"""The draft: what prelabel says about one item, in the shape every output starts from."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# Final states of an item (the store also has ``pending``, ``leased`` and ``stopped``).
DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclass(slots=True)
class Draft:
    id: str
    text: str
    task: str
    label: Any  # the task kind's shape: str, list[str], spans, or an instruction pair
    confidence: float | None
    needs_review: bool
    flags: list[str]
    model: str
    prompt_version: str
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    cost_usd: float = 0.0
    error: str | None = None
    review_priority: float = 0.0
    state: str = DONE
    line: int | None = None  # line of the input file the item came from
    source_id: str | None = None      # the input item it derives from (itself for an original)
    scores: dict[str, float] | None = None  # per-label confidence, where the kind has several
    augmentation: dict | None = None  # a variant: how it was made ({"kind": ..., parameters})
    carried_label: Any = None         # a variant: the label carried over from its source

    def to_record(self) -> dict:
        # Not dataclasses.asdict: it deep-copies every value, and this runs once per item.
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(Draft))

