"""Named entities: the model names each mention and its type; prelabel finds the offsets.

Label: spans ``{"start", "end", "text", "label", "score"}`` in the item's text (prelabel.tasks.spans has
the rules: repeated mentions, accents, overlaps). A span's score is the probability the model gave
the mention's text and its type (their tokens' joint probability); with consistency, the share of
samples that hold the same span (start, end, type), spans held by at least half being kept.
``confidence``: the least sure span; for no entities, the probability of closing the list empty.
Flags: ``span_not_found`` (a mention not in the text, dropped), ``span_conflict`` (overlaps kept).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import LabelledSpec
from ..llm.completion import Completion
from ..checks.confidence import close_probability, label_probability, span_probability, vote_parts
from ..checks.flags import LABEL_NORMALIZED, SAMPLES_DISAGREE, SPAN_CONFLICT, SPAN_NOT_FOUND
from .spans import Mention, Span, locate, overlapping
from .answer import common_flags, dumps, empty_array_close, lenient_flags, load_object, string_values, valid_samples
from .base import BadExample, InvalidOutput, TaskOutput
from .labelled import LabelledTask
from .studio import TEXT, options, result_id


class NerSpec(LabelledSpec):
    """The job file's ``task:`` section for ``kind: ner``; ``labels`` are the entity types."""

    kind: Literal["ner"]


@dataclass(frozen=True, slots=True)
class _Answer:
    spans: dict[tuple[int, int, str], float | None]  # (start, end, type) -> its probability
    empty: float | None
    flags: list[str]


class NerTask(LabelledTask):
    kind = "ner"
    format_name = "entities"

    def _schema(self) -> dict:
        entity = {"type": "object",
                  "properties": {"text": {"type": "string"}, "type": {"type": "string", "enum": self.labels}},
                  "required": ["text", "type"], "additionalProperties": False}
        return {"type": "object", "properties": {"entities": {"type": "array", "items": entity}},
                "required": ["entities"], "additionalProperties": False}

    def expected_output_tokens(self, count) -> int:
        typical = max(self.labels, key=len)
        return count(dumps({"entities": [{"text": "Firstname Lastname", "type": typical}] * 3}))

    def parse(self, completion: Completion, text: str) -> list[TaskOutput]:
        answers: list[_Answer] = valid_samples(completion.all_samples(),
                                               lambda content, logprobs: self._read(content, logprobs, text))
        decided = vote_parts([(a.spans, a.empty) for a in answers], self.mode)
        spans = [Span(start, end, text[start:end], label, None if score is None else round(score, 6))
                 for (start, end, label), score in sorted(decided.parts.items())]
        flags = common_flags([a.flags for a in answers])
        if overlapping(spans):
            flags.append(SPAN_CONFLICT)
        if not decided.agree:
            flags.append(SAMPLES_DISAGREE)
        return [TaskOutput([s.as_label() for s in spans], decided.confidence, flags)]

    def _read(self, content: str | None, logprobs, text: str) -> _Answer:
        data = load_object(content)
        entities = data.get("entities")
        if not isinstance(entities, list):
            raise InvalidOutput('"entities" must be a list (empty when there are none)')
        texts, types = string_values(content, "text"), string_values(content, "type")
        priced = len(texts) == len(types) == len(entities)
        flags: list[str] = lenient_flags(data)
        mentions = []
        for i, entity in enumerate(entities):
            if not isinstance(entity, dict) or not isinstance(entity.get("text"), str):
                raise InvalidOutput(f'entities[{i}] must be an object with a string "text" and a "type"')
            label, normalized = self.label_set.resolve(entity.get("type"))
            if normalized:
                flags.append(LABEL_NORMALIZED)
            score = None
            if priced and texts[i][0] == entity["text"]:
                p_text = span_probability(logprobs, content, texts[i][1], texts[i][2])
                p_type = label_probability(logprobs, content, types[i][1], types[i][2], self.labels)[0]
                score = None if p_text is None or p_type is None else p_text * p_type
            mentions.append(Mention(entity["text"], label, score))
        located = locate(text, mentions)
        if located.missing:
            flags.append(SPAN_NOT_FOUND)
        empty = None
        if not entities and (close := empty_array_close(content, "entities")) is not None:
            empty = close_probability(logprobs, content, close)
        return _Answer({(s.start, s.end, s.label): s.score for s in located.spans}, empty, flags)

    # --- gold answers --------------------------------------------------------------------------

    def check_answer(self, answer: Any) -> str | None:
        """A list of {"text", "label"} (offsets, if any, are not needed: mentions are shown)."""
        if not isinstance(answer, list):
            return f'an NER answer is a list of {{"text", "label"}} spans, got {answer!r}'
        for i, span in enumerate(answer):
            if not isinstance(span, dict) or not isinstance(span.get("text"), str) or not span["text"].strip():
                return f'span {i} needs a non-empty "text"'
            if error := self.label_set.check(span.get("label")):
                return f"span {i}: {error}"
        return None

    def answer_labels(self, answer: Any) -> set[str]:
        return {span["label"] for span in answer}

    def same_label(self, a: Any, b: Any) -> bool:
        """The same mentions with the same types; offsets differ between a variant and its source."""
        return sorted((s["text"], s["label"]) for s in a or ()) == sorted((s["text"], s["label"]) for s in b or ())

    def label_spans(self, label: Any) -> list[dict]:
        return list(label or ())

    def _answer(self, spans: list[dict]) -> str:
        """Each (mention, type) once, in order of first appearance: the answer the prompt asks for
        (every occurrence of a listed mention is labelled)."""
        ordered = sorted(spans, key=lambda s: s.get("start", 0))
        mentions = dict.fromkeys((s["text"], s["label"]) for s in ordered)
        return dumps({"entities": [{"text": t, "type": label} for t, label in mentions]})


# --- few-shot examples -----------------------------------------------------------------------------

def example_spans(spec, text: str, raw: Any) -> list[dict]:
    """Spans given as ``{"text", "label"}`` (found in order: a repeated text takes its next
    occurrence) or ``{"start", "end", "label"}``, in the task's span shape."""
    if not isinstance(raw, list):
        raise BadExample("spans", 'must be a list of {"text", "label"} or {"start", "end", "label"}')
    spans, next_from = [], {}
    for index, span in enumerate(raw):
        where = f"spans[{index}]"
        if not isinstance(span, dict):
            raise BadExample(where, 'must be {"text", "label"} or {"start", "end", "label"}')
        if "start" in span or "end" in span:
            start, end = span.get("start"), span.get("end")
            if not (type(start) is int and type(end) is int and 0 <= start < end <= len(text)):
                raise BadExample(where, f"start and end must be offsets with 0 <= start < end <= {len(text)}")
            if "text" in span and span["text"] != text[start:end]:
                raise BadExample(f"{where}.text",
                                 f"{span['text']!r} is not the text at {start}:{end} ({text[start:end]!r})")
        else:
            surface = span.get("text")
            if not isinstance(surface, str) or not surface:
                raise BadExample(f"{where}.text", "required: the span's text (or its start and end)")
            start = text.find(surface, next_from.get(surface, 0))
            if start < 0:
                again = " again" if surface in next_from else ""
                raise BadExample(f"{where}.text", f"{surface!r} does not occur{again} in the text")
            end = next_from[surface] = start + len(surface)
        spans.append({"start": start, "end": end, "text": text[start:end], "label": span.get("label"),
                      "score": None})
    spans.sort(key=lambda s: (s["start"], s["end"]))
    return spans


# --- Label Studio ------------------------------------------------------------------------------

def studio_controls(spec) -> list[str]:
    return ['  <Header value="Mark every entity; fix or delete the drafted ones"/>',
            f'  <Labels name="label" toName="{TEXT}">',
            *options(spec, "Label"),
            "  </Labels>",
            f'  <Text name="{TEXT}" value="${TEXT}"/>']


def studio_results(record: dict) -> list[dict]:
    results = []
    for span in record.get("label") or []:
        value = {"start": span["start"], "end": span["end"], "text": span["text"], "labels": [span["label"]]}
        result = {"id": result_id(record["id"], f"label/{span['start']}/{span['end']}/{span['label']}"),
                  "from_name": "label", "to_name": TEXT, "type": "labels", "value": value}
        if span.get("score") is not None:
            # Label Studio's docs put a region's score in value; its editor reads it on the result.
            value["score"] = result["score"] = span["score"]
        results.append(result)
    return results
