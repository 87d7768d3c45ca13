"""What the labelled kinds (classify, multilabel, ner) share: a label schema, the prompt that lists
it, a strict JSON answer format, and how many samples the confidence mode asks for."""
from __future__ import annotations

from typing import Any, Sequence

from ..checks.confidence import LOGPROBS
from ..config import ReviewSpec
from .prompts import PromptTemplate
from .base import Example
from .labels import LabelSet, labels_field
from .request import Request


def json_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


class LabelledTask:
    kind: str
    format_name: str
    measures_confidence = True

    def __init__(self, spec, template: PromptTemplate, guidelines: str | None, review: ReviewSpec) -> None:
        self.labels = list(spec.labels)
        self.label_set = LabelSet(spec.labels, spec.aliases)
        self.prompt_version = template.version
        self.mode = review.confidence
        self.samples = 1 if self.mode == LOGPROBS else review.samples
        self.temperature = None if self.mode == LOGPROBS else review.sample_temperature
        self._request = Request(template, guidelines, **self._fields(spec))
        self._format = json_format(self.format_name, self._schema())

    def _fields(self, spec) -> dict[str, str]:
        """The template's ``$`` fields besides the text and the guidelines."""
        return {"labels": labels_field(spec.labels)}

    def _schema(self) -> dict:
        raise NotImplementedError

    def _answer(self, answer: Any) -> str:
        """A gold answer as the JSON the model is asked to write."""
        raise NotImplementedError

    def messages(self, text: str, examples: Sequence[Example] = (), guidelines: bool = True) -> list[dict]:
        return self._request.messages(text, [(e.text, self._answer(e.answer)) for e in examples], guidelines)

    def response_format(self) -> dict:
        return self._format

    def check_answer(self, answer: Any) -> str | None:
        raise NotImplementedError

    def same_label(self, a: Any, b: Any) -> bool:
        """Whether two labels say the same (a variant's re-check against the label it carried)."""
        return a == b

    def label_spans(self, label: Any) -> list[dict]:
        """The spans a label marks in its text (kept intact, and found again, in a variant)."""
        return []

    def finetune_messages(self, record: dict) -> list[dict] | None:
        """The task's own prompt for the draft's text, answered with its label."""
        label = record.get("label")
        if self.check_answer(label) is not None:
            return None
        return [*self.messages(record["text"]), {"role": "assistant", "content": self._answer(label)}]
