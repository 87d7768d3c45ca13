"""Single-label classification (sentiment is a classify job with three labels).

Label: one label name. Confidence: the probability of the label's tokens (logprobs); with
consistency, the winning label's share of the samples (a tie goes to the first sample's label), and
``scores`` holds every label's share.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import field_validator

from ..config import LabelledSpec
from ..llm.completion import Completion
from ..checks.confidence import LOGPROBS, combine, label_probability, vote
from ..checks.labelscore import LabelScore
from ..checks.flags import LABEL_NORMALIZED, SAMPLES_DISAGREE
from .answer import common_flags, dumps, lenient_flags, load_object, valid_samples
from .base import TaskOutput
from .labelled import LabelledTask
from .studio import TEXT, choices_result, options

_LABEL_VALUE = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')


class ClassifySpec(LabelledSpec):
    """The job file's ``task:`` section for ``kind: classify``."""

    kind: Literal["classify"]

    @field_validator("labels")
    @classmethod
    def _two_or_more(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels) < 2:
            raise ValueError("a classification needs at least two labels")
        return labels


@dataclass(frozen=True, slots=True)
class _Answer:
    label: str
    probability: float | None
    flags: list[str]
    score: LabelScore | None = None  # the runner-up and margin, where alternatives were sent


class ClassifyTask(LabelledTask):
    kind = "classify"
    format_name = "classification"

    def _schema(self) -> dict:
        return {"type": "object", "properties": {"label": {"type": "string", "enum": self.labels}},
                "required": ["label"], "additionalProperties": False}

    def expected_output_tokens(self, count) -> int:
        return max(count(dumps({"label": label})) for label in self.labels)

    def parse(self, completion: Completion, text: str = "") -> list[TaskOutput]:
        answers: list[_Answer] = valid_samples(completion.all_samples(), self._read)
        winner, shares = vote([a.label for a in answers])
        chosen = next(a for a in answers if a.label == winner)
        probability = chosen.probability
        several = len(answers) > 1
        flags = common_flags([a.flags for a in answers])
        if several and shares[winner] < 1.0:
            flags.append(SAMPLES_DISAGREE)
        confidence = combine(self.mode, probability, shares[winner] if several else None)
        scores = None
        if several and self.mode != LOGPROBS:
            scores = {name: round(share, 6) for name, share in shares.items()}
        output = TaskOutput(winner, confidence, flags, scores)
        if chosen.score is not None:
            output.runner_up, output.margin = chosen.score.runner_up, round(chosen.score.margin, 6)
        return [output]

    def _read(self, content: str | None, logprobs) -> _Answer:
        data = load_object(content)
        label, normalized = self.label_set.resolve(data.get("label"))
        match = _LABEL_VALUE.search(content)
        probability, score = None, None
        if match:
            probability, score = label_probability(logprobs, content, match.start(1), match.end(1), self.labels)
        return _Answer(label, probability, ([LABEL_NORMALIZED] if normalized else []) + lenient_flags(data), score)

    # --- gold answers --------------------------------------------------------------------------

    def check_answer(self, answer: Any) -> str | None:
        return self.label_set.check(answer)

    def answer_labels(self, answer: Any) -> set[str]:
        return {answer}

    def _answer(self, label: str) -> str:
        return dumps({"label": label})


# --- Label Studio ------------------------------------------------------------------------------

def studio_controls(spec) -> list[str]:
    return ['  <Header value="Choose the label that fits the text"/>',
            f'  <Text name="{TEXT}" value="${TEXT}"/>',
            f'  <Choices name="label" toName="{TEXT}" choice="single-radio" showInline="true">',
            *options(spec, "Choice"),
            "  </Choices>"]


def studio_results(record: dict) -> list[dict]:
    if record.get("label") is None:
        return []
    return [choices_result(record, "label", [record["label"]])]
