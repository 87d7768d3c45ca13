"""Instruction/response pairs for fine-tuning, two ways.

- From a passage (the item's text): ``n`` pairs grounded in it, each its own draft with suffix
  "1".."n" (draft id "<item id>#<k>", tied to the source item). A model that returns more keeps
  the first ``n``; fewer are kept as they are (a re-ask would throw good pairs away); none is invalid.
- With ``instruction_field``: the item's text is the instruction and one response is written.

Label: ``{"instruction", "response"}``. Confidence: None. There is no label distribution to measure,
and the probability of free text says little of its quality, so every pair is flagged
``no_confidence`` and needs a person's read; the flags below put the suspicious ones first.
Consistency sampling does not apply (one sample).

Flags, each on the pair it concerns:
- ``empty_output``: the instruction or the response is empty or only whitespace.
- ``verbatim_source``: the response (or, from a passage, the instruction) copies the source. On
  words (casefolded, NFC, punctuation ignored): the two are equal, or the pair's text contains a
  contiguous run of at least 90% of the source's words. A copied passage teaches nothing.
- ``duplicate_pair``: its instruction equals an earlier pair's of the same item, by the same word
  comparison; the first of them stays unflagged.
"""
from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher
from typing import Any, ClassVar, Literal, Sequence

from pydantic import Field

from ..config import ReviewSpec, TaskSpecBase
from ..llm.completion import Completion
from .prompts import PromptTemplate
from ..checks.placeholders import example_values, is_placeholder
from ..checks.flags import DUPLICATE_PAIR, EMPTY_OUTPUT, PLACEHOLDER_OUTPUT, VERBATIM_SOURCE
from .answer import dumps, lenient_flags, load_object, valid_samples
from .base import BadExample, Example, InvalidOutput, TaskOutput
from .request import Request
from .studio import TEXT, result_id

# The system line of fine-tuning examples: the pairs are meant for a general assistant.
FINETUNE_SYSTEM = "You are a helpful assistant."
VERBATIM_SHARE = 0.9
_UNFIT = {VERBATIM_SOURCE, EMPTY_OUTPUT, DUPLICATE_PAIR, PLACEHOLDER_OUTPUT}  # pairs that make no fine-tuning example
_WORDS = re.compile(r"\w+")


class InstructSpec(TaskSpecBase):
    """The job file's ``task:`` section for ``kind: instruct``."""

    carries_label: ClassVar[bool] = False  # a pair is no label a variant could carry

    kind: Literal["instruct"]
    n: int = Field(3, ge=1, le=20)  # pairs generated from each passage
    # Set: each item's field is an instruction and only the response is generated.
    instruction_field: str | None = None


def default_prompt(spec: InstructSpec) -> str:
    return "instruct_response" if spec.instruction_field is not None else "instruct"


def example_key(spec: InstructSpec) -> str:
    """An example's gold answer: its pairs, or with an instruction field, the response."""
    return "response" if spec.instruction_field else "pairs"


def example_answer(spec: InstructSpec, text: str, raw: Any) -> Any:
    if not spec.instruction_field:
        return raw
    if not isinstance(raw, str):
        raise BadExample("response", "must be a string")
    return {"instruction": text, "response": raw}


def words(text: str) -> list[str]:
    return _WORDS.findall(unicodedata.normalize("NFC", text).casefold())


def copies(candidate: str, source: str) -> bool:
    """Whether ``candidate`` repeats ``source`` verbatim (the rule in the module's docstring)."""
    got, src = words(candidate), words(source)
    if not src or not got:
        return False
    if got == src:
        return True
    need = VERBATIM_SHARE * len(src)
    if len(got) < need:  # too short to hold the copy: most responses, at no cost
        return False
    match = SequenceMatcher(None, got, src, autojunk=False).find_longest_match(0, len(got), 0, len(src))
    return match.size >= need


class InstructTask:
    kind = "instruct"
    samples = 1
    temperature = None
    measures_confidence = False  # generated text has no label distribution: its own checks flag it

    def __init__(self, spec: InstructSpec, template: PromptTemplate, guidelines: str | None,
                 review: ReviewSpec) -> None:
        self.n = spec.n
        self.from_instruction = spec.instruction_field is not None
        self.template = template
        self.prompt_version = template.version
        self._request = Request(template, guidelines, n=str(spec.n))
        # What the prompt shows as example values: a model that copies them has not answered.
        self._placeholders = example_values(" ".join(m["content"] for m in self._request.messages("")))
        pair = {"type": "object",
                "properties": {"instruction": {"type": "string"}, "response": {"type": "string"}},
                "required": ["instruction", "response"], "additionalProperties": False}
        if self.from_instruction:
            name, properties = "instruction_response", {"response": {"type": "string"}}
        else:
            # The count is in the prompt and the description: strict schemas do not take maxItems.
            name = "instruction_pairs"
            properties = {"pairs": {"type": "array", "items": pair,
                                    "description": f"exactly {spec.n} instruction/response pairs"}}
        self._format = {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": {
            "type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}}}

    def messages(self, text: str, examples: Sequence[Example] = (), guidelines: bool = True) -> list[dict]:
        return self._request.messages(text, [(e.text, self._answer(e.answer)) for e in examples], guidelines)

    def response_format(self) -> dict:
        return self._format

    def expected_output_tokens(self, count) -> int:
        typical = {"instruction": "word " * 20, "response": "word " * 80}
        if self.from_instruction:
            return count(dumps({"response": typical["response"] * 2}))
        return count(dumps({"pairs": [typical] * self.n}))

    def parse(self, completion: Completion, text: str) -> list[TaskOutput]:
        first = completion.all_samples()[:1]
        if self.from_instruction:
            [(response, lenient)] = valid_samples(first, self._read_response)
            pair = {"instruction": text, "response": response}
            return [TaskOutput(pair, None, lenient + self._flags(pair, text, check_instruction=False,
                                                                 placeholders=self._placeholders))]
        [(pairs, lenient)] = valid_samples(first, self._read_pairs)
        outputs, seen = [], set()
        for i, pair in enumerate(pairs[: self.n], start=1):
            flags = lenient + self._flags(pair, text, check_instruction=True, placeholders=self._placeholders)
            # On words; a text with none ("...", "?") on its normalised characters, so it counts too.
            key = tuple(words(pair["instruction"])) or (" ".join(pair["instruction"].split()),)
            if key != ("",) and key in seen:
                flags.append(DUPLICATE_PAIR)
            seen.add(key)
            outputs.append(TaskOutput(pair, None, flags, suffix=str(i)))
        return outputs

    @staticmethod
    def _flags(pair: dict, source: str, check_instruction: bool, placeholders=frozenset()) -> list[str]:
        flags = []
        if not pair["instruction"].strip() or not pair["response"].strip():
            flags.append(EMPTY_OUTPUT)
        if is_placeholder(pair["response"], placeholders) or (
                check_instruction and is_placeholder(pair["instruction"], placeholders)):
            flags.append(PLACEHOLDER_OUTPUT)
        if copies(pair["response"], source) or (check_instruction and copies(pair["instruction"], source)):
            flags.append(VERBATIM_SOURCE)
        return flags

    @staticmethod
    def _read_response(content: str | None, logprobs) -> tuple[str, list[str]]:
        data = load_object(content)
        response = data.get("response")
        if not isinstance(response, str):
            raise InvalidOutput('"response" must be a string')
        return response, lenient_flags(data)

    @staticmethod
    def _read_pairs(content: str | None, logprobs) -> tuple[list[dict], list[str]]:
        data = load_object(content)
        pairs = data.get("pairs")
        if not isinstance(pairs, list) or not pairs:
            raise InvalidOutput('"pairs" must be a non-empty list of {"instruction", "response"} objects')
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, dict) and isinstance(pair.get("instruction"), str)
                    and isinstance(pair.get("response"), str)):
                raise InvalidOutput(f'pairs[{i}] must be an object with string "instruction" and "response"')
        return [{"instruction": p["instruction"], "response": p["response"]} for p in pairs], lenient_flags(data)

    # --- gold answers --------------------------------------------------------------------------

    def check_answer(self, answer: Any) -> str | None:
        """From a passage: a list of pairs. With an instruction field: the pair (or its response)."""
        if self.from_instruction:
            response = answer.get("response") if isinstance(answer, dict) else None
            if not isinstance(response, str) or not response.strip():
                return f'an answer is {{"instruction", "response"}} with a non-empty response, got {answer!r}'
            return None
        if not isinstance(answer, list) or not answer:
            return f'an answer is a non-empty list of {{"instruction", "response"}} pairs, got {answer!r}'
        for i, pair in enumerate(answer):
            if _pair_error(pair):
                return f"pair {i}: {_pair_error(pair)}"
        return None

    def answer_labels(self, answer: Any) -> set[str]:
        return set()

    def same_label(self, a: Any, b: Any) -> bool:
        return a == b

    def label_spans(self, label: Any) -> list[dict]:
        return []

    def finetune_messages(self, record: dict) -> list[dict] | None:
        """The pair as the assistant's training turn: the instruction alone, as a user would ask.

        A pair the checks flagged (a copy of the source, a duplicate, an empty part) makes no example,
        even with ``include_flagged``: every pair carries ``no_confidence``, so that option is how
        unreviewed pairs get written, and it must not let these through."""
        pair = record.get("label")
        if _pair_error(pair) or set(record.get("flags") or ()) & _UNFIT:
            return None
        return [{"role": "system", "content": FINETUNE_SYSTEM},
                {"role": "user", "content": pair["instruction"]},
                {"role": "assistant", "content": pair["response"]}]

    def _answer(self, answer: Any) -> str:
        if self.from_instruction:
            return dumps({"response": answer["response"]})
        return dumps({"pairs": [{"instruction": p["instruction"], "response": p["response"]} for p in answer]})


def _pair_error(pair: Any) -> str | None:
    if not isinstance(pair, dict):
        return f"not an instruction/response pair: {pair!r}"
    for key in ("instruction", "response"):
        if not isinstance(pair.get(key), str) or not pair[key].strip():
            return f'"{key}" must be a non-empty string'
    return None


# --- Label Studio ------------------------------------------------------------------------------

def studio_controls(spec) -> list[str]:
    source = "instruction" if getattr(spec, "instruction_field", None) else "passage"
    return [f'  <Header value="Check the pair against the {source}: edit it, or reject the task"/>',
            f'  <Text name="{TEXT}" value="${TEXT}"/>',
            '  <Header value="Instruction" size="5"/>',
            f'  <TextArea name="instruction" toName="{TEXT}" editable="true" maxSubmissions="1" rows="2"/>',
            '  <Header value="Response" size="5"/>',
            f'  <TextArea name="response" toName="{TEXT}" editable="true" maxSubmissions="1" rows="8"/>']


def studio_results(record: dict) -> list[dict]:
    pair = record.get("label")
    if not isinstance(pair, dict):
        return []
    return [{"id": result_id(record["id"], name), "from_name": name, "to_name": TEXT,
             "type": "textarea", "value": {"text": [pair[name]]}}
            for name in ("instruction", "response") if isinstance(pair.get(name), str) and pair[name].strip()]
