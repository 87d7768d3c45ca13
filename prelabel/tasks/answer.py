"""Reading a model's JSON answer: the object, and where its strings sit in the raw content.

Positions are of the raw characters between the quotes (escapes included), which is what the
tokens cover, so ``span_probability`` can price each value the model wrote.
"""
from __future__ import annotations

import functools
import json
import re
from json.decoder import scanstring
from typing import Any, Callable, Sequence

from ..checks.flags import LENIENT_JSON
from .base import InvalidOutput


class LenientObject(dict):
    """An answer that is JSON only leniently (raw control characters inside strings, or a Markdown
    code fence around the object): read as it unambiguously means; the draft is flagged."""


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?[ \t]*```\s*$", re.S)


def _lenient(content: str) -> dict | None:
    """The object in an answer a strict parser refuses, where only one reading exists; else None."""
    fenced = _FENCE.match(content)
    text = fenced.group(1) if fenced else content
    try:
        data = json.loads(text, strict=False)  # control characters (a raw newline) inside strings
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def load_object(content: str | None) -> dict:
    try:
        data = json.loads(content or "")
    except json.JSONDecodeError as e:
        data = _lenient(content or "")
        if data is None:
            raise InvalidOutput(f"not JSON ({e.msg})") from None
        return LenientObject(data)
    if not isinstance(data, dict):
        raise InvalidOutput("the answer must be a JSON object")
    return data


def lenient_flags(data: dict) -> list[str]:
    """``[LENIENT_JSON]`` when the answer needed a lenient read."""
    return [LENIENT_JSON] if isinstance(data, LenientObject) else []


def dumps(value: Any) -> str:
    """JSON as the examples and fine-tuning files show it to a model: compact, characters as they are."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@functools.lru_cache(maxsize=64)
def _key(key: str, opening: str) -> re.Pattern:
    return re.compile(r'"%s"\s*:\s*%s' % (re.escape(key), re.escape(opening)))


def string_values(content: str, key: str) -> list[tuple[str, int, int]]:
    """Every string value of ``key`` in the content, in order: (value, raw start, raw end)."""
    found = []
    for match in _key(key, '"').finditer(content):
        try:
            value, end = scanstring(content, match.end())
        except ValueError:
            break
        found.append((value, match.end(), end - 1))
    return found


def array_strings(content: str, key: str) -> tuple[list[tuple[str, int, int]], int | None] | None:
    """The strings of the array under ``key`` with their raw positions, and where its ``]`` is;
    None when the array is not a plain list of strings as written."""
    match = _key(key, "[").search(content)
    if match is None:
        return None
    items, position, size = [], match.end(), len(content)
    while True:
        while position < size and content[position] in " \t\r\n,":
            position += 1
        if position >= size:
            return None
        if content[position] == "]":
            return items, position
        if content[position] != '"':
            return None
        try:
            value, end = scanstring(content, position + 1)
        except ValueError:
            return None
        items.append((value, position + 1, end - 1))
        position = end


def empty_array_close(content: str, key: str) -> int | None:
    """Where the ``]`` of an empty array under ``key`` is (its probability is the confidence that
    nothing applies); None if the array is not empty or not found."""
    match = _key(key, "[").search(content)
    if match is None:
        return None
    rest = content[match.end():]
    stripped = rest.lstrip()
    if not stripped.startswith("]"):
        return None
    return match.end() + len(rest) - len(stripped)


def valid_samples(samples: Sequence[tuple[str | None, Any]], read: Callable) -> list:
    """``read(content, logprobs)`` of every sample that is valid; InvalidOutput (the first sample's)
    only when none is: a consistency vote goes on with the answers it has."""
    answers, first_error = [], None
    for content, logprobs in samples:
        try:
            answers.append(read(content, logprobs))
        except InvalidOutput as e:
            first_error = first_error or e
    if not answers:
        raise first_error or InvalidOutput("no answer")
    return answers


def common_flags(flag_lists: Sequence[list[str]]) -> list[str]:
    """Flags that at least half of the valid samples raised (all of one sample's, with one)."""
    counts: dict[str, int] = {}
    for flags in flag_lists:
        for flag in dict.fromkeys(flags):
            counts[flag] = counts.get(flag, 0) + 1
    return [flag for flag, count in counts.items() if 2 * count >= len(flag_lists)]
