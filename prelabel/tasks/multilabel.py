"""Multi-label classification: zero or more labels per item.

Label: the chosen label names, in the order of the job file's labels. ``scores``: each chosen
label's confidence (the probability of its tokens; with consistency, its share of the samples, and
the shares of labels some samples chose but the answer leaves out). ``confidence``: the least sure
chosen label; for an empty answer, the probability the model gave to closing the list empty (with
consistency, the agreement on leaving every label out).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import LabelledSpec
from ..llm.completion import Completion
from ..checks.confidence import close_probability, label_probability, vote_parts
from ..checks.flags import LABEL_NORMALIZED, SAMPLES_DISAGREE
from .answer import array_strings, common_flags, dumps, lenient_flags, load_object, valid_samples
from .base import InvalidOutput, TaskOutput
from .labelled import LabelledTask
from .studio import TEXT, choices_result, options


class MultilabelSpec(LabelledSpec):
    """The job file's ``task:`` section for ``kind: multilabel``."""

    kind: Literal["multilabel"]


@dataclass(frozen=True, slots=True)
class _Answer:
    labels: dict[str, float | None]  # label -> the probability of its tokens
    empty: float | None              # an empty answer: the probability of its closing bracket
    flags: list[str]


class MultilabelTask(LabelledTask):
    kind = "multilabel"
    format_name = "multilabel"

    def __init__(self, spec: MultilabelSpec, template, guidelines, review) -> None:
        super().__init__(spec, template, guidelines, review)
        self._order = {name: i for i, name in enumerate(self.labels)}

    def _schema(self) -> dict:
        return {"type": "object",
                "properties": {"labels": {"type": "array", "items": {"type": "string", "enum": self.labels}}},
                "required": ["labels"], "additionalProperties": False}

    def expected_output_tokens(self, count) -> int:
        typical = sorted(self.labels, key=len, reverse=True)[:2]  # two labels, the longer ones
        return count(dumps({"labels": typical}))

    def parse(self, completion: Completion, text: str = "") -> list[TaskOutput]:
        answers: list[_Answer] = valid_samples(completion.all_samples(), self._read)
        decided = vote_parts([(a.labels, a.empty) for a in answers], self.mode)
        labels = sorted(decided.parts, key=self._order.__getitem__)
        flags = common_flags([a.flags for a in answers])
        if not decided.agree:
            flags.append(SAMPLES_DISAGREE)
        scores = {label: decided.parts[label] for label in labels if decided.parts[label] is not None}
        if decided.shares is not None:  # what the samples considered but the answer leaves out
            scores.update((label, share) for label, share in decided.shares.items() if label not in decided.parts)
        scores = {label: round(score, 6) for label, score in scores.items()}
        return [TaskOutput(labels, decided.confidence, flags, scores or None)]

    def _read(self, content: str | None, logprobs) -> _Answer:
        data = load_object(content)
        raw = data.get("labels")
        if not isinstance(raw, list):
            raise InvalidOutput('"labels" must be a list of labels (empty when none applies)')
        flags: list[str] = lenient_flags(data)
        labels: dict[str, float | None] = {}
        written = array_strings(content, "labels")
        positions = written[0] if written and len(written[0]) == len(raw) else [None] * len(raw)
        for value, where in zip(raw, positions):
            label, normalized = self.label_set.resolve(value)
            if normalized:
                flags.append(LABEL_NORMALIZED)
            probability = (label_probability(logprobs, content, where[1], where[2], self.labels)[0]
                           if where else None)
            labels.setdefault(label, probability)
        empty = None
        if not labels and written:
            close = written[1]
            empty = close_probability(logprobs, content, close)
        return _Answer(labels, empty, flags)

    # --- gold answers --------------------------------------------------------------------------

    def check_answer(self, answer: Any) -> str | None:
        if not isinstance(answer, list):
            return f"a multi-label answer is a list of labels, got {answer!r}"
        return next((error for label in answer if (error := self.label_set.check(label))), None)

    def answer_labels(self, answer: Any) -> set[str]:
        return set(answer)

    def same_label(self, a: Any, b: Any) -> bool:
        return set(a or ()) == set(b or ())

    def _answer(self, labels: list[str]) -> str:
        return dumps({"labels": sorted(dict.fromkeys(labels), key=self._order.__getitem__)})


# --- Label Studio ------------------------------------------------------------------------------

def studio_controls(spec) -> list[str]:
    return ['  <Header value="Choose every label that applies (or none)"/>',
            f'  <Text name="{TEXT}" value="${TEXT}"/>',
            f'  <Choices name="labels" toName="{TEXT}" choice="multiple" showInline="true">',
            *options(spec, "Choice"),
            "  </Choices>"]


def studio_results(record: dict) -> list[dict]:
    # An empty answer has no result: Label Studio shows "nothing chosen" for it anyway.
    if not record.get("label"):
        return []
    return [choices_result(record, "labels", list(record["label"]))]
