"""What a task kind is: two pure functions around the engine (distilabel's shape).

``messages`` turns an item into a chat request; ``parse`` turns a completion into a label with its
confidence, or raises ``InvalidOutput`` whose message goes back to the model in a bounded re-ask.
The engine, store, budgets and outputs know nothing of any particular kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..completion import Completion
from ..tokens import TokenCounter


class InvalidOutput(ValueError):
    """The model's answer broke the task's schema; the message says how, for the re-ask."""


@dataclass(slots=True)
class TaskOutput:
    label: str | None
    confidence: float | None
    flags: list[str] = field(default_factory=list)


class Task(Protocol):
    kind: str
    prompt_version: str

    def messages(self, text: str) -> list[dict]: ...

    def response_format(self) -> dict: ...

    def parse(self, completion: Completion) -> TaskOutput: ...

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
