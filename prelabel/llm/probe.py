"""`prelabel probe`: what an endpoint and model can do, asked with a few tiny requests.

A user's first command against a new server. Each probe is one request of a few tokens, sent once
(no retries: a refusal is the answer); the result is the table printed and the ``Capabilities``
the worker would otherwise learn from its first refusals, kept in the store for the next run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import openai

from .capabilities import FORMS, JSON_SCHEMA, PROMPT_ONLY, Capabilities, adapt
from .client import CHAT_PATH, EMBEDDINGS_PATH, request_template, send_json
from .completion import Completion
from .engine import parse_embeddings

_SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
           "required": ["label"], "additionalProperties": False}
_MESSAGES = [{"role": "user", "content": 'Is the sky blue? Answer with JSON: {"label": "yes"} or {"label": "no"}.'}]


@dataclass(frozen=True, slots=True)
class Row:
    capability: str
    value: str
    detail: str


@dataclass(slots=True)
class _Answer:
    status: int | None          # None: no HTTP answer (connection error, timeout)
    body: Any = None
    error: str = ""


async def _post(client: openai.AsyncOpenAI, request: dict, path: str = CHAT_PATH) -> _Answer:
    body = json.dumps(request).encode()
    try:
        raw = await send_json(client, request_template(client, path), body, path)
    except openai.APIStatusError as e:
        return _Answer(e.status_code, None, str(e)[:160])
    except (openai.APITimeoutError, openai.APIConnectionError) as e:
        cause = f" ({' '.join(str(e.__cause__).split())})" if e.__cause__ else ""  # the refusal itself
        return _Answer(None, None, f"{type(e).__name__}: {e}{cause}"[:300])
    try:
        return _Answer(raw.status_code, json.loads(raw.content))
    except ValueError as e:
        return _Answer(raw.status_code, None, f"not JSON: {e}")


def _completion(answer: _Answer) -> Completion | None:
    if answer.status != 200 or answer.body is None:
        return None
    try:
        return Completion.from_response(answer.body)
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


async def probe(client: openai.AsyncOpenAI, model: str, embedding_model: str | None = None) -> tuple[Capabilities, list[Row]]:
    caps, rows = Capabilities(), []
    base = {"model": model, "messages": _MESSAGES, "max_tokens": 16, "temperature": 0}

    first = await _post(client, base)
    if first.status is None:
        raise ConnectionError(f"the endpoint does not answer: {first.error}")
    if first.status != 200:
        rows.append(Row("chat", "no", f"status {first.status}: {first.error}"))
        return caps, rows
    plain = _completion(first)
    rows.append(Row("chat", "yes", f"model answered as {plain.model!r}" if plain else "answered"))
    caps.usage = bool(plain and plain.usage_reported)
    rows.append(Row("usage", "yes" if caps.usage else "no", "" if caps.usage else "prelabel counts tokens itself"))

    structured = {**base, "response_format": {"type": "json_schema", "json_schema": {
        "name": "probe", "strict": True, "schema": _SCHEMA}}}
    tried = []
    for form in FORMS:
        caps.structured = form
        if form == PROMPT_ONLY:
            break
        answer = await _post(client, adapt(structured, caps))
        completion = _completion(answer)
        if completion is not None:
            try:
                json.loads(completion.content or "")
                break
            except ValueError:
                tried.append(f"{form}: answered, not JSON")
                continue
        tried.append(f"{form}: status {answer.status}")
    rows.append(Row("structured output", caps.structured,
                    "; ".join(tried) or ("the strongest form" if caps.structured == JSON_SCHEMA else "")))

    # In the structured form: a small model may answer a free prompt with nothing at all.
    shaped = adapt(structured, caps)
    bare = _completion(await _post(client, {**shaped, "logprobs": True}))
    top = await _post(client, {**shaped, "logprobs": True, "top_logprobs": 1})
    with_top = _completion(top)
    caps.logprobs = bare is not None or with_top is not None
    caps.top_logprobs = with_top is not None
    caps.logprobs_seen = bool(with_top and with_top.logprobs) or bool(bare and bare.logprobs)
    alternatives = bool(with_top and with_top.logprobs and any(t[2] for t in with_top.logprobs))
    rows.append(Row("logprobs", "yes" if bare and bare.logprobs else "no",
                    "without top_logprobs" + ("" if bare and bare.logprobs else ": none returned")))
    rows.append(Row("top_logprobs", "yes" if alternatives else "no",
                    "alternatives returned with top_logprobs=1" if alternatives else
                    f"status {top.status}: {top.error}" if with_top is None else "none returned"))

    several = await _post(client, {**shaped, "n": 2, "temperature": 0.8})
    samples = _completion(several)
    caps.n = bool(samples and len(samples.all_samples()) >= 2)
    rows.append(Row("n", "yes" if caps.n else "no",
                    "" if caps.n else ("ignored: one choice" if samples else f"refused: status {several.status}")
                    + "; consistency sends samples apart"))

    seeded = _completion(await _post(client, {**base, "seed": 1}))
    caps.seed = seeded is not None
    rows.append(Row("seed", "yes" if caps.seed else "no", ""))

    # The first request's prompt again: a server that caches prompts says so in its usage.
    again = _completion(await _post(client, base))
    cached = again.cached_prompt_tokens if again else 0
    caps.prompt_cache = cached > 0
    rows.append(Row("prompt cache", "yes" if cached else "not seen",
                    f"usage.prompt_tokens_details.cached_tokens: {cached} of {again.prompt_tokens} on a repeat"
                    if cached else "no cached_tokens on a repeated short prompt (OpenAI caches from 1,024 tokens)"))

    name = embedding_model or model
    embedded = await _post(client, {"model": name, "input": ["probe"]}, EMBEDDINGS_PATH)
    caps.embeddings = False
    detail = f"status {embedded.status}: {embedded.error}"
    if embedded.status == 200 and embedded.body is not None:
        try:
            vectors, _ = parse_embeddings(json.dumps(embedded.body).encode(), 1)
            caps.embeddings, detail = True, f"{len(vectors[0])} dimensions with {name!r}"
        except (ValueError, KeyError, IndexError, TypeError) as e:
            detail = f"answered, but not one vector per input ({type(e).__name__}); similar examples go lexical"
    rows.append(Row("embeddings", "yes" if caps.embeddings else "no", detail))
    return caps, rows


def format_rows(rows: list[Row]) -> str:
    width = max(len(r.capability) for r in rows)
    value = max(len(r.value) for r in rows)
    return "\n".join(f"{r.capability:<{width}}  {r.value:<{value}}  {r.detail}".rstrip() for r in rows)
