"""Paraphrase, back-translation and the fidelity check through the job's model: pure request
builders and parsers.

The engine that labels sends these requests too (retries, budgets, cache); here are only the
messages, the response format and the reading of the answer. Back-translation is two requests per
pivot language: ``translate_request(text, pivot)``, then ``translate_request(pivot_text, source)``.
Protected terms (entity texts, for instance) are listed in the prompt to be kept verbatim; whether
they were is checked on the variant (``relocate_spans``), not here. The fidelity check is one
request per variant: source, variant and carried label in, ``{"faithful", "reason"}`` out.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Sequence

from prelabel.config import LANGUAGES
from prelabel.checks.placeholders import is_placeholder
from prelabel.tasks.prompts import PromptTemplate, load_template
from prelabel.tasks import InvalidOutput
from prelabel.tasks.answer import load_object

PARAPHRASE_FORMAT = {"type": "json_schema", "json_schema": {"name": "paraphrases", "strict": True, "schema": {
    "type": "object", "properties": {"paraphrases": {"type": "array", "items": {"type": "string"}}},
    "required": ["paraphrases"], "additionalProperties": False}}}
# The templates show their answers as "<paraphrase>" and the like: slots that is_placeholder knows.
_PLACEHOLDERS: frozenset[str] = frozenset()
FIDELITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "fidelity", "strict": True, "schema": {
    "type": "object", "properties": {"faithful": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["faithful", "reason"], "additionalProperties": False}}}
FIDELITY_TOKENS = 64  # max_tokens of a fidelity answer: a boolean and a short reason
TRANSLATION_FORMAT = {"type": "json_schema", "json_schema": {"name": "translation", "strict": True, "schema": {
    "type": "object", "properties": {"translation": {"type": "string"}},
    "required": ["translation"], "additionalProperties": False}}}


@lru_cache(maxsize=None)
def _template(name: str) -> PromptTemplate:
    return load_template(name)


def prompt_versions() -> dict[str, str]:
    """The versions (name@hash) of the augmentation templates, for records."""
    return {name: _template(name).version for name in ("paraphrase", "translate", "fidelity")}


def _protected(terms: Sequence[str]) -> str:
    if not terms:
        return ""
    listed = "\n".join(f"- {json.dumps(term, ensure_ascii=False)}" for term in terms)
    return ("\nKeep each of these terms exactly as written (same spelling and case, never translated or "
            f"reworded), as often as it appears in the text:\n{listed}\n")


def paraphrase_request(text: str, n: int, protected_terms: Sequence[str] = ()) -> tuple[list[dict], dict]:
    """Messages asking for ``n`` paraphrases of ``text`` in one answer, and their response format."""
    messages = _template("paraphrase").render(n=str(n), protected=_protected(protected_terms), text=text)
    return messages, PARAPHRASE_FORMAT


def translate_request(text: str, target_lang: str, protected_terms: Sequence[str] = ()) -> tuple[list[dict], dict]:
    """Messages asking for ``text`` in ``target_lang`` (an ISO 639-1 code), and their response format."""
    if target_lang not in LANGUAGES:
        raise ValueError(f"{target_lang!r} is not an ISO 639-1 language code")
    messages = _template("translate").render(language=LANGUAGES[target_lang],
                                             protected=_protected(protected_terms), text=text)
    return messages, TRANSLATION_FORMAT


def fidelity_request(source: str, variant: str, label) -> tuple[list[dict], dict]:
    """Messages asking whether ``variant`` keeps the meaning of ``source`` and what its ``label``
    (the label carried, in the task's shape) depends on, and their response format."""
    messages = _template("fidelity").render(label=json.dumps(label, ensure_ascii=False), source=source,
                                            text=variant)
    return messages, FIDELITY_FORMAT


def _object(content: str, key: str):
    try:  # strict JSON, else read leniently where only one reading exists (a raw newline in a string, a fence)
        data = load_object(content)
    except InvalidOutput as e:
        if str(e).startswith("not JSON"):
            raise
        data = None  # JSON, but not an object
    if not isinstance(data, dict) or key not in data:
        raise InvalidOutput(f'expected a JSON object with "{key}"')
    return data[key]


def parse_paraphrases(content: str, n: int) -> list[str]:
    """The paraphrases in an answer: 1 to ``n`` non-empty strings (more are cut to ``n``)."""
    found = _object(content, "paraphrases")
    if not isinstance(found, list) or not all(isinstance(p, str) for p in found):
        raise InvalidOutput('"paraphrases" must be a list of strings')
    found = [p.strip() for p in found if p.strip()]
    if found and all(is_placeholder(p, _PLACEHOLDERS) for p in found):
        raise InvalidOutput('"paraphrases" holds the prompt\'s placeholder, not a paraphrase of the text')
    found = [p for p in found if not is_placeholder(p, _PLACEHOLDERS)]
    if not found:
        raise InvalidOutput('"paraphrases" holds no paraphrase')
    return found[:n]


def parse_translation(content: str) -> str:
    """The translated text in an answer."""
    found = _object(content, "translation")
    if not isinstance(found, str) or not found.strip():
        raise InvalidOutput('"translation" must be a non-empty string')
    if is_placeholder(found, _PLACEHOLDERS):
        raise InvalidOutput('"translation" holds a placeholder, not a translation of the text')
    return found.strip()


def parse_fidelity(content: str) -> tuple[bool, str]:
    """(faithful, reason) from a fidelity answer."""
    faithful = _object(content, "faithful")
    if not isinstance(faithful, bool):
        raise InvalidOutput('"faithful" must be true or false')
    reason = json.loads(content).get("reason", "")
    return faithful, reason.strip()[:200] if isinstance(reason, str) else ""


def rewrite_tokens(text_tokens: int) -> int:
    """Output tokens to allow for one rewrite of a text: twice its length, for languages that take more."""
    return 2 * text_tokens + 32


def llm_requests(step) -> int:
    """Requests one source costs for a step: paraphrase 1, back-translation 2 per pivot, local 0."""
    if step.kind == "paraphrase":
        return 1
    if step.kind == "back_translation":
        return 2 * len(step.via)
    return 0
