"""A kind's chat request: its template with the fields rendered once, plus few-shot turns.

The per-item path (no examples, guidelines in) is one string substitution: it runs for every item.
Examples and leaving the guidelines out (when the budget trims them) take a slower path.
"""
from __future__ import annotations

from typing import Sequence

from .prompts import PromptTemplate


def guidelines_field(guidelines: str | None) -> str:
    return f"\nGuidelines:\n{guidelines.strip()}\n" if guidelines and guidelines.strip() else ""


class Request:
    def __init__(self, template: PromptTemplate, guidelines: str | None, **fields: str) -> None:
        self.template = template
        self._with = {**fields, "guidelines": guidelines_field(guidelines)}
        self._without = {**fields, "guidelines": ""}
        self._bound = template.bind(**self._with)

    def messages(self, text: str, turns: Sequence[tuple[str, str]] = (), guidelines: bool = True) -> list[dict]:
        """``turns``: (example text, the assistant's answer as JSON), shown before the item."""
        if guidelines and not turns:
            return self._bound(text)
        fields = self._with if guidelines else self._without
        system, user = self.template.render(**fields, text=text)
        shots: list[dict] = []
        for example_text, answer in turns:
            shots.append(self.template.render(**fields, text=example_text)[1])
            shots.append({"role": "assistant", "content": answer})
        return [system, *shots, user]
