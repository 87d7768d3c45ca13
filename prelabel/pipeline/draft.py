"""The draft: what prelabel says about one item, in the shape every output starts from."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..states import ItemState
from ..checks.flags import verdict

DONE, FAILED, SKIPPED = ItemState.DONE, ItemState.FAILED, ItemState.SKIPPED  # the final states, by their short names


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
    endpoint: str | None = None  # who answered (prelabel.llm.endpoint: a base URL, or "simulator")
    simulated: bool = False      # True: a simulator answered, a stand-in, not a model
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    cost_usd: float = 0.0
    error: str | None = None
    raw_output: str | None = None     # failed after its re-asks: the model's last answer, for the reviewer
    review_priority: float = 0.0
    state: str = DONE
    line: int | None = None  # line of the input file the item came from
    source_id: str | None = None      # the input item it derives from (itself for an original)
    scores: dict[str, float] | None = None  # per-label confidence, where the kind has several
    augmentation: dict | None = None  # a variant: how it was made ({"kind": ..., parameters})
    carried_label: Any = None         # a variant: the label carried over from its source
    runner_up: str | None = None      # the next most probable label (from the endpoint's alternatives)
    margin: float | None = None       # confidence minus the runner-up's

    def to_record(self) -> dict:
        # Not dataclasses.asdict: it deep-copies every value, and this runs once per item.
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(Draft))



def draft_record(spec, task, draft_id: str, item, output, flags: list[str], state: str, error: str | None,
                 usage, carried: dict | None = None, text: str | None = None, raw_output: str | None = None) -> dict:
    """One draft of ``item`` (a leased item) as a record: ``output`` is what the task made of it,
    ``usage`` the requests it cost (each with prompt_tokens, completion_tokens, cost_usd), and
    ``carried`` what a variant carries from its source (``text``: the variant's)."""
    v = verdict(output.label, output.confidence, flags, spec.review.min_confidence, task.measures_confidence,
                getattr(output, "margin", None))
    return Draft(
        id=draft_id, text=item.text if text is None else text, task=task.kind, label=output.label,
        confidence=None if output.confidence is None else round(output.confidence, 6),
        needs_review=v.needs_review, flags=v.flags, model=spec.model.name, prompt_version=task.prompt_version,
        usage={"prompt_tokens": sum(u.prompt_tokens for u in usage),
               "completion_tokens": sum(u.completion_tokens for u in usage)},
        cost_usd=round(sum(u.cost_usd for u in usage), 8), error=error, raw_output=raw_output, review_priority=v.priority,
        state=state, line=item.line, source_id=carried["source_id"] if carried else item.item_id,
        scores=output.scores, augmentation=carried["augmentation"] if carried else None,
        carried_label=carried["label"] if carried else None,
        runner_up=getattr(output, "runner_up", None), margin=getattr(output, "margin", None)).to_record()
