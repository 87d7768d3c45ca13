"""What the simulated model says: a label chosen by keywords or a stable hash, JSON that validates
against the request's schema, logprobs that add up to it, embeddings. Reproducible and meaningless.

Shapes it recognises besides enums and plain values: a list of entities (objects with a string
"text"/"mention" and an enum "type"/"label") gets capitalised word runs of the item; objects with
"instruction"/"response" strings get sentences made of the item's words (never the item itself); a
list of enum strings gets 0-3 distinct values; an array described as "exactly N ..." gets N items.
The item is the text between triple quotes in the last user message (all of it when there are none).
``[[unsure]]`` in the item flattens every choice: sampled answers disagree and logprobs are low.
A fidelity check (``fidelity_verdict``) fails a variant that changed a sentiment word of its source.
"""
from __future__ import annotations

import codecs
import collections
import functools
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any

import tiktoken

MODEL_ID = "sim-1"
REFUSE_MARKER = "[[refuse]]"
UNSURE_MARKER = "[[unsure]]"
UNFAITHFUL_MARKER = "[[unfaithful]]"  # in a source: every variant of it is judged unfaithful
REFUSAL = "I'm sorry, I can't help with that."
EMBEDDING_DIMS = 64
SURE_LOGPROB = -0.0001  # a token the simulated model does not hesitate over
NOT_IN_ENUM = "maybe"
_SENTIMENTS = ("positive", "negative", "neutral")
_POSITIVE = frozenset("love loved loves great thanks thank excellent amazing awesome perfect "
                      "wonderful happy fantastic".split())
_NEGATIVE = frozenset("broken broke refund angry terrible worst late awful hate hated bad poor "
                      "disappointed useless".split())
_WORD = re.compile(r"\w+")
# What json_object mode answers: a small object shaped like a classification.
JSON_OBJECT_SCHEMA = {"type": "object", "properties": {"label": {"enum": list(_SENTIMENTS)}}}
_STRING_FORMATS = {"date": "2024-01-15", "date-time": "2024-01-15T12:00:00Z", "time": "12:00:00",
                   "email": "someone@example.com", "uri": "https://example.com/"}
_MENTION_KEYS = ("text", "mention", "entity", "span")
_TYPE_KEYS = ("type", "label", "entity_type", "category")
_INSTRUCTION_KEYS = ("instruction", "question", "prompt")
_RESPONSE_KEYS = ("response", "answer", "output")
_EXACTLY = re.compile(r"exactly (\d+)")
_TOKEN = re.compile(r"\w+(?:['’-]\w+)*")
# Capitalised words that start sentences rather than name things.
_NOT_NAMES = frozenset("a after an and are as at before but by can could dear do does did dr for from good "
                       "great he hello hi how i if in is it its just last mr mrs ms my next no not of on or "
                       "our please she so still thanks thank that the their then there these they this to "
                       "was we were what when where which who why will with would yes yesterday today you "
                       "your".split())
_FILLER = frozenset("about after again also been before being between both could does doing during each "
                    "from have having here into just more most other over same should some such than "
                    "that their them then there these they this those through under until very were "
                    "what when where which while will with would your".split())


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) (``hash()`` is salted per process)."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def sentiment(text: str) -> str:
    words = _WORD.findall(text.lower())
    score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def fidelity_verdict(source: str, variant: str) -> tuple[bool, str]:
    """Whether a variant keeps its source's meaning, as the simulated model judges it: not when the
    source holds ``[[unfaithful]]``, nor when a sentiment word of the keyword rule was lost, added
    or changed ("love" -> "enjoy" counts: the rule no longer sees it)."""
    if UNFAITHFUL_MARKER in source:
        return False, "the source is marked unfaithful"
    before = [w for w in _WORD.findall(source.lower()) if w in _POSITIVE or w in _NEGATIVE]
    after = [w for w in _WORD.findall(variant.lower()) if w in _POSITIVE or w in _NEGATIVE]
    if collections.Counter(before) != collections.Counter(after):
        return False, f"sentiment words changed: {' '.join(before) or '-'} -> {' '.join(after) or '-'}"
    return True, "same meaning and sentiment"


@dataclass
class _Pick:
    """An enum string in a generated answer, with the distribution it was drawn from."""

    value: str
    probs: dict[str, float]  # every enum value -> its simulated probability


class Chooser:
    """How one answer fills a schema: fixed by the item's hash at temperature 0, sampled above."""

    def __init__(self, text: str, seed: int, rng: random.Random | None) -> None:
        self.text, self.rng = text, rng
        self.unsure = UNSURE_MARKER in text
        self._key = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=16).hexdigest()
        # Skewed towards sure answers, as models are; about a quarter fall below 0.7.
        self.confidence = 0.99 - 0.64 * _unit(self._key) ** 3
        self._item: str | None = None

    @property
    def item(self) -> str:
        """The item inside the prompt: between the first and the last triple quotes, if any."""
        if self._item is None:
            first, last = self.text.find('"""'), self.text.rfind('"""')
            self._item = self.text[first + 3:last].strip() if 0 <= first < last else self.text
        return self._item

    def keeps(self, default: bool, path: str) -> bool:
        """A yes/no part of the answer: ``default`` at temperature 0; sampled, flipped now and then
        (half the time when unsure)."""
        if self.rng is None:
            return default
        flip = 0.5 if self.unsure else 1 - self.confidence
        return default != (self.rng.random() < flip)

    def unit(self, path: str) -> float:
        return _unit(self._key, path)

    def enum(self, values: list, path: str) -> Any:
        if len(values) < 2 or not all(isinstance(v, str) for v in values):
            return values[int(self.unit(path) * len(values))] if values else None
        preferred = values[int(self.unit(path) * len(values))]
        by_lower = {v.lower(): v for v in values}
        if sum(s in by_lower for s in _SENTIMENTS) >= 2:
            preferred = by_lower.get(sentiment(self.text), preferred)
        if self.unsure:  # no favourite: every value as likely, samples scatter
            probs = dict.fromkeys(values, 1 / len(values))
            return _Pick(self.rng.choice(values) if self.rng is not None else preferred, probs)
        # The favourite must stay the likeliest value, or temperature 0 would not pick it.
        p = max(self.confidence, 1 / len(values) + 0.02)
        probs = {v: (1 - p) / (len(values) - 1) for v in values}
        probs[preferred] = p
        if self.rng is not None and self.rng.random() >= p:
            return _Pick(self.rng.choice([v for v in values if v != preferred]), probs)
        return _Pick(preferred, probs)


def instance(schema: Any, root: dict, chooser: Chooser, path: str = "$", depth: int = 0) -> Any:
    """A value that validates against ``schema`` (the subset structured outputs accept)."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    if "$ref" in schema:  # "#/$defs/Name"
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return instance(target, root, chooser, path, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return chooser.enum(schema["enum"], path)
    for key in ("anyOf", "oneOf", "allOf"):
        if options := schema.get(key):
            present = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return instance((present or options)[0], root, chooser, path, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        if any(name in properties for name in _INSTRUCTION_KEYS + _RESPONSE_KEYS):
            return _pair(properties, root, chooser, path, depth)
        return {name: instance(sub, root, chooser, f"{path}.{name}", depth + 1)
                for name, sub in properties.items()}
    if kind == "array":
        items = _deref(schema.get("items", {}), root)
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, 3)))
        if (keys := _entity_keys(items, root)) is not None:
            return _entities(items, keys, root, chooser, path, depth)
        values = items.get("enum") if isinstance(items, dict) else None
        if values and all(isinstance(v, str) for v in values):
            return _label_list(values, low, high, chooser, path)
        exactly = _EXACTLY.search(str(schema.get("description", "")))
        count = int(exactly[1]) if exactly else min(max(low, 1), high)
        return [instance(items, root, chooser, f"{path}[{i}]", depth + 1) for i in range(count)]
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer", chooser.unit(path))
    if kind == "boolean":
        return chooser.unit(path) < 0.5
    if kind == "null":
        return None
    if schema.get("format") in _STRING_FORMATS:
        return _STRING_FORMATS[schema["format"]]
    text = " ".join(["example"] * max(1, math.ceil(int(schema.get("minLength", 0)) / 7)))
    return text[: int(schema.get("maxLength", len(text)))]


def _deref(schema: Any, root: dict, depth: int = 0) -> Any:
    while isinstance(schema, dict) and "$ref" in schema and depth < 16:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema, depth = target, depth + 1
    return schema


def _entity_keys(items: Any, root: dict) -> tuple[str, str] | None:
    """(mention key, type key) when the items are entities: a string and an enum property."""
    properties = items.get("properties") if isinstance(items, dict) else None
    if not properties:
        return None
    resolved = {key: sub for key, value in properties.items() if isinstance(sub := _deref(value, root), dict)}
    mention = next((k for k in _MENTION_KEYS if resolved.get(k, {}).get("type") == "string"), None)
    kind = next((k for k in _TYPE_KEYS if "enum" in resolved.get(k, {})), None)
    return (mention, kind) if mention and kind else None


def mentions(text: str) -> list[str]:
    """Runs of capitalised words (accented ones too), less the words that only start sentences."""
    found, run, last_end = [], [], -1
    for match in _TOKEN.finditer(text):
        word = match.group()
        joined = run and text[last_end:match.start()] == " "
        if word[0].isupper() and (joined or not run):
            run.append(word)
        else:
            found.append(run)
            run = [word] if word[0].isupper() else []
        last_end = match.end()
    found.append(run)
    names = []
    for words in found:
        while words and words[0].lower() in _NOT_NAMES:
            words = words[1:]
        if words:
            names.append(" ".join(words))
    return list(dict.fromkeys(names))


def _entities(items: dict, keys: tuple[str, str], root: dict, chooser: Chooser, path: str,
              depth: int) -> list:
    mention_key, type_key = keys
    properties = items.get("properties") or {}
    types = _deref(properties[type_key], root)["enum"]
    answer = []
    for i, name in enumerate(mentions(chooser.item)[:8]):
        if not chooser.keeps(True, f"{path}[{name}]"):
            continue
        repeats = 2 if chooser.item.count(name) > 1 and chooser.unit(f"{path}[{name}]#") < 0.5 else 1
        for _ in range(repeats):
            entity = {}
            for key, sub in properties.items():
                if key == mention_key:
                    entity[key] = name
                elif key == type_key:
                    entity[key] = chooser.enum(types, f"{path}[{name}].{key}")
                else:
                    entity[key] = instance(sub, root, chooser, f"{path}[{i}].{key}", depth + 1)
            answer.append(entity)
    return answer


def _label_list(values: list, low: int, high: int, chooser: Chooser, path: str) -> list:
    """Distinct values, 0-3 of them (within minItems/maxItems), each priced like an enum pick."""
    # Labels whose words the item uses come first, then a stable shuffle of the rest.
    item_words = set(_WORD.findall(chooser.item.lower()))
    named = [v for v in values if set(re.split(r"[\W_]+", v.lower())) & item_words]
    ranked = sorted(values, key=lambda v: (v not in named, chooser.unit(f"{path}|{v}")))
    want = min(max(len(named), int(chooser.unit(path) * 4), low), high, len(values))
    chosen = [v for i, v in enumerate(ranked) if chooser.keeps(i < want, f"{path}|{v}")]
    chosen = (chosen + [v for v in ranked if v not in chosen])[:max(low, min(len(chosen), high))]
    p = 0.5 if chooser.unsure else chooser.confidence
    picks = []
    for value in chosen:
        probs = dict.fromkeys(values, (1 - p) / max(1, len(values) - 1))
        probs[value] = p
        picks.append(_Pick(value, probs))
    return picks


def _pair(properties: dict, root: dict, chooser: Chooser, path: str, depth: int) -> dict:
    """An instruction and a response made of the item's words: grounded, and never the item itself."""
    words = [w for w in dict.fromkeys(_TOKEN.findall(chooser.item))
             if len(w) > 3 and w.lower() not in _FILLER and w.lower() not in _NOT_NAMES] or ["this"]
    u = chooser.unit(path)
    a, b, c = (words[int((u * 7 + k * 0.37) * len(words)) % len(words)] for k in range(3))
    templates = ((f"What does the text say about {a}?", f"It says that {a} is connected to {b}, and it mentions {c}."),
                 (f"Explain how {a} relates to {b}.", f"{a} relates to {b} through {c}, as described."),
                 (f"Summarise the point about {b} in one sentence.", f"The point is that {b} matters because of {a}."),
                 (f"List two facts about {c}.", f"First, {c} involves {a}. Second, it is linked to {b}."))
    instruction, response = templates[int(u * len(templates))]
    if not any(name in properties for name in _INSTRUCTION_KEYS):  # answering the item itself
        response = f"In short: {a} depends on {b}. Start with {b}, then check {c}."
    answer = {}
    for name, sub in properties.items():
        if name in _INSTRUCTION_KEYS:
            answer[name] = instruction
        elif name in _RESPONSE_KEYS:
            answer[name] = response
        else:
            answer[name] = instance(sub, root, chooser, f"{path}.{name}", depth + 1)
    return answer


def _number(schema: dict, integer: bool, u: float) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    low = 0 if low is None else low
    high = low + 10 if high is None else high
    low = high - 10 if low > high else low  # only a maximum, below the default minimum
    if integer:
        first = math.floor(low) + 1 if "exclusiveMinimum" in schema else math.ceil(low)
        last = math.ceil(high) - 1 if "exclusiveMaximum" in schema else math.floor(high)
        return first if last < first else min(last, first + int(u * (last - first + 1)))
    # Kept off the bounds so exclusive ones hold too.
    return min(max(round(low + (high - low) * (0.05 + 0.9 * u), 2), low), high)


def serialize(instance: Any, break_enum: bool) -> tuple[str, list[tuple[int, _Pick]], bool]:
    """Compact JSON as a model writes it, and where each enum value starts (for logprobs).

    With ``break_enum`` the first enum value is replaced by one outside the enum.
    """
    parts: list[str] = []
    spans: list[tuple[int, _Pick]] = []
    size, broken = 0, False

    def put(text: str) -> None:
        nonlocal size
        parts.append(text)
        size += len(text)

    def write(value: Any) -> None:
        nonlocal broken
        if isinstance(value, dict):
            put("{")
            for i, (key, item) in enumerate(value.items()):
                put(("," if i else "") + dumps(key) + ":")
                write(item)
            put("}")
        elif isinstance(value, list):
            put("[")
            for i, item in enumerate(value):
                put("," if i else "")
                write(item)
            put("]")
        elif isinstance(value, _Pick) and break_enum and not broken:
            broken = True
            put(dumps(NOT_IN_ENUM if NOT_IN_ENUM not in value.probs else NOT_IN_ENUM + "_not"))
        elif isinstance(value, _Pick):
            spans.append((size + 1, value))
            put(dumps(value.value))
        else:
            put(dumps(value))

    write(instance)
    return "".join(parts), spans, broken


@functools.lru_cache(maxsize=4096)
def _first_token(encoding: tiktoken.Encoding, text: str) -> bytes:
    return encoding.decode_single_token_bytes(encoding.encode_ordinary(text)[0])


def token_logprobs(encoding: tiktoken.Encoding, content: str, tokens: list[int],
              spans: list[tuple[int, _Pick]], top_k: int) -> dict:
    """OpenAI's logprobs object: sure of every token but the first one of each enum value."""
    raw_content = content.encode()
    ascii_only = content.isascii()
    starts = {(s if ascii_only else len(content[:s].encode())): pick for s, pick in spans}
    # Token strings concatenate to the content: a token that ends inside a character gets "" and
    # the next one the whole character; ``bytes`` stays exact.
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    entries, position = [], 0
    for token in tokens:
        raw = encoding.decode_single_token_bytes(token)
        text, end = decoder.decode(raw), position + len(raw)
        start = next((s for s in starts if position <= s < end), None)
        if start is None:
            top = [{"token": text, "logprob": SURE_LOGPROB, "bytes": list(raw)}] if top_k else []
            entries.append({"token": text, "logprob": SURE_LOGPROB, "bytes": list(raw),
                            "top_logprobs": top})
        else:
            # Rivals are the other values' first tokens after the same prefix (such as '":"');
            # values that share a first token share its probability too, as with a real model.
            pick, prefix = starts[start], raw_content[position:start].decode("utf-8", "replace")
            by_token: dict[bytes, float] = collections.defaultdict(float)
            for value, p in pick.probs.items():
                if value == pick.value:
                    by_token[raw] += p
                else:
                    by_token[_first_token(encoding, prefix + dumps(value)[1:])] += p
            ranked = sorted(by_token.items(), key=lambda item: -item[1])[:top_k]
            top = [{"token": t.decode("utf-8", "replace"), "logprob": math.log(p), "bytes": list(t)}
                   for t, p in ranked]
            entries.append({"token": text, "logprob": math.log(by_token[raw]), "bytes": list(raw),
                            "top_logprobs": top})
        position = end
    return {"content": entries, "refusal": None}


def embedding(text: str) -> list[float]:
    """A hashed bag of words, L2-normalised: equal texts get equal vectors, shared words add up."""
    vector = [0.0] * EMBEDDING_DIMS
    for word in _WORD.findall(text.lower()):
        u = _unit("embed", word)
        vector[int(u * EMBEDDING_DIMS)] += 1.0 if int(u * 2 * EMBEDDING_DIMS) % 2 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]
