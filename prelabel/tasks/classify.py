"""Single-label classification (sentiment is a classify job with three labels)."""
from __future__ import annotations

import json
import re

from ..completion import Completion
from ..confidence import span_probability
from ..config import ClassifyTask as ClassifySpec
from ..prompts import PromptTemplate
from .base import InvalidOutput, TaskOutput

_LABEL_VALUE = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')


class ClassifyTask:
    kind = "classify"

    def __init__(self, spec: ClassifySpec, template: PromptTemplate, guidelines: str | None) -> None:
        self.labels = list(spec.labels)
        self.template = template
        self.prompt_version = template.version
        self._fields = {
            "labels": "\n".join(f"- {name}: {definition}" for name, definition in spec.labels.items()),
            "guidelines": f"\nGuidelines:\n{guidelines.strip()}\n" if guidelines else "",
        }
        self._messages = template.bind(**self._fields)
        self._format = {"type": "json_schema", "json_schema": {"name": "classification", "strict": True, "schema": {
            "type": "object", "properties": {"label": {"type": "string", "enum": self.labels}},
            "required": ["label"], "additionalProperties": False}}}

    def messages(self, text: str) -> list[dict]:
        return self._messages(text)

    def expected_output_tokens(self, count) -> int:
        return max(count(json.dumps({"label": label})) for label in self.labels)

    def response_format(self) -> dict:
        return self._format

    def parse(self, completion: Completion) -> TaskOutput:
        content = completion.content or ""
        try:
            data = json.loads(content)
        except json.JSONDecodeError as e:
            raise InvalidOutput(f"not JSON ({e.msg})") from None
        label = data.get("label") if isinstance(data, dict) else None
        if label not in self.labels:
            raise InvalidOutput(f"label {label!r} is not one of {self.labels}")
        match = _LABEL_VALUE.search(content)
        confidence = None
        if match:
            confidence = span_probability(completion.logprobs, content, match.start(1), match.end(1))
        return TaskOutput(label, confidence)
