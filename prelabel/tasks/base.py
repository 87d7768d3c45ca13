"""What a task kind is: two pure functions around the engine (distilabel's shape).

``messages`` turns an item into a chat request; ``parse`` turns a completion into drafts (one for
most kinds; several for instruction pairs), or raises ``InvalidOutput`` whose message goes back to
the model in a bounded re-ask. The engine, store, budgets and outputs know nothing of any kind.

A label's shape is the kind's: classify ``str``; multilabel ``list[str]``; ner a list of spans
``{"start", "end", "text", "label", "score"}``; instruct ``{"instruction", "response"}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from ..llm.completion import Completion

if TYPE_CHECKING:  # tiktoken is not needed to read a job file
    from ..budget.tokens import TokenCounter


class InvalidOutput(ValueError):
    """The model's answer broke the task's schema; the message says how, for the re-ask."""


class BadExample(ValueError):
    """A few-shot example's line that does not fit; the loader reports it as a ``JobFileError``
    naming the file, the line and ``field``."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(slots=True)
class TaskOutput:
    """One draft's worth of answer."""

    label: Any                 # the kind's shape (see above); None when there is none
    confidence: float | None   # the draft's overall confidence: the least sure of its parts
    flags: list[str] = field(default_factory=list)
    scores: dict[str, float] | None = None  # per-label confidence (multilabel; vote shares)
    suffix: str | None = None  # several drafts from one item: the draft id is "<item id>#<suffix>"
    runner_up: str | None = None  # the next most probable label, and the confidence's lead over it
    margin: float | None = None


@dataclass(frozen=True, slots=True)
class Example:
    """A few-shot example: an item's text and its gold answer in the kind's label shape
    (instruct: a list of {"instruction", "response"} pairs, or with an instruction field, the
    pair whose instruction is ``text``)."""

    text: str
    answer: Any
    line: int = 0  # of the examples file, for errors


class Task(Protocol):
    kind: str
    prompt_version: str
    samples: int               # choices asked per request (n): more than 1 for consistency
    temperature: float | None  # None: the model's; consistency samples need one above 0
    measures_confidence: bool  # False: no confidence exists to flag (instruction generation)

    def messages(self, text: str, examples: Sequence[Example] = (), guidelines: bool = True) -> list[dict]:
        """The request for one item; examples as prior user/assistant turns; ``guidelines=False``
        leaves the guidelines out (the budget trims them after the examples)."""

    def check_answer(self, answer: Any) -> str | None:
        """Why a gold answer (from an examples file) does not fit the schema; None if it does."""

    def answer_labels(self, answer: Any) -> set[str]:
        """The labels a gold answer uses (``diverse`` example selection covers as many as it can)."""

    def same_label(self, a: Any, b: Any) -> bool:
        """Whether two labels say the same (a variant's re-check against the label it carried)."""

    def label_spans(self, label: Any) -> list[dict]:
        """The spans a label marks in its text (kept intact, and found again, in a variant)."""

    def response_format(self) -> dict: ...

    def parse(self, completion: Completion, text: str) -> list[TaskOutput]:
        """The drafts in a completion (every sample of it); ``text`` is the item's full text, which
        NER finds its spans in and instruct checks its pairs against."""

    def finetune_messages(self, record: dict) -> list[dict] | None:
        """A draft as a chat fine-tuning example (system, user, assistant); None if it makes none."""

    def expected_output_tokens(self, count) -> int:
        """A typical answer's length, for plans (the budget caps use max_output_tokens)."""


def reask_messages(content: str | None, error: str) -> list[dict]:
    """The turn that shows the model its invalid answer and asks again."""
    return [{"role": "assistant", "content": content or ""},
            {"role": "user", "content": f"That answer is invalid: {error}. Answer again with valid JSON only."}]


_SENTINEL = "x"


def fixed_prompt_tokens(task: Task, counter: TokenCounter) -> int:
    """Tokens of a request besides the item's text, framing included: counted once per job.

    Counted around a one-token stand-in rather than an empty text, because the template's own
    tokens split differently with nothing between them.
    """
    return counter.count_messages(task.messages(_SENTINEL)) - counter.count(_SENTINEL)
