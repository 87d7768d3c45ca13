"""An OpenAI-compatible HTTP server for tests and benchmarks: a stand-in, not a model.

It behaves like OpenAI's endpoint on the wire (latency, rolling-window rate limits answered with
429 + ``retry-after`` + ``x-ratelimit-*``, random 5xx, logprobs, refusals, JSON that validates
against the request's schema) so the client can be exercised over real HTTP. The "answers" come
from a keyword list and a stable hash of the last user message: reproducible, and meaningless.
"""
from __future__ import annotations

import asyncio
import base64
import codecs
import collections
import functools
import hashlib
import itertools
import json
import math
import random
import re
import signal
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import tiktoken
from aiohttp import web

from prelabel.tokens import TokenCounter

MODEL_ID = "sim-1"
REFUSE_MARKER = "[[refuse]]"
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
_JSON_OBJECT_SCHEMA = {"type": "object", "properties": {"label": {"enum": list(_SENTIMENTS)}}}
_STRING_FORMATS = {"date": "2024-01-15", "date-time": "2024-01-15T12:00:00Z", "time": "12:00:00",
                   "email": "someone@example.com", "uri": "https://example.com/"}


@dataclass(frozen=True)
class SimConfig:
    latency_s: float = 0.2  # mean time before a 200/5xx answer
    jitter_s: float = 0.0  # uniform +/- around latency_s (never below 0)
    rpm: int | None = None  # None = unlimited
    tpm: int | None = None  # prompt tokens + max_tokens, as OpenAI estimates
    window: str = "second"  # "second": limit/60 per rolling 1 s, as OpenAI enforces; "minute"
    error_rate: float = 0.0  # share of admitted requests answered 500/502/503
    logprobs: bool = True  # False: an endpoint that never returns logprobs
    invalid_rate: float = 0.0  # share of JSON answers that break the schema
    seed: int = 0
    track_contents: bool = True  # count requests per last user message (tests); off for benchmarks


@dataclass
class SimStats:
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    by_content: collections.Counter = field(default_factory=collections.Counter)


class _Window:
    """What one limit admitted in the last ``span`` seconds: a rolling window of (time, cost)."""

    def __init__(self, per_minute: int, span: float) -> None:
        self.per_minute, self.span = per_minute, span
        self.capacity = max(1.0, per_minute * span / 60.0)
        self.used = 0
        self._entries: collections.deque[tuple[float, int]] = collections.deque()

    def _prune(self, now: float) -> None:
        while self._entries and self._entries[0][0] + self.span <= now:
            self.used -= self._entries.popleft()[1]

    def wait_for(self, cost: int, now: float) -> float:
        """Seconds until ``cost`` fits (0: it fits now).

        An empty window admits any cost, so a request bigger than one window is slow, not stuck.
        """
        self._prune(now)
        if not self._entries or self.used + cost <= self.capacity:
            return 0.0
        used = self.used
        for admitted_at, entry_cost in self._entries:
            used -= entry_cost
            if used + cost <= self.capacity:
                return admitted_at + self.span - now
        return self._entries[-1][0] + self.span - now

    def add(self, cost: int, now: float) -> None:
        self._entries.append((now, cost))
        self.used += cost

    def remaining(self, now: float) -> int:
        self._prune(now)
        return max(0, math.floor(self.capacity - self.used))

    def reset_in(self, now: float) -> float:
        self._prune(now)
        return self._entries[0][0] + self.span - now if self._entries else 0.0

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0


def _duration(seconds: float) -> str:
    """OpenAI's reset format (Go's time.Duration): "120ms", "1s", "1.5s", "6m0s"."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{secs}" if minutes else secs


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) (``hash()`` is salted per process)."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _sentiment(text: str) -> str:
    words = _WORD.findall(text.lower())
    score = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


@dataclass
class _Pick:
    """An enum string in a generated answer, with the distribution it was drawn from."""

    value: str
    probs: dict[str, float]  # every enum value -> its simulated probability


class _Chooser:
    """How one answer fills a schema: fixed by the item's hash at temperature 0, sampled above."""

    def __init__(self, text: str, seed: int, rng: random.Random | None) -> None:
        self.text, self.rng = text, rng
        self._key = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=16).hexdigest()
        # Skewed towards sure answers, as models are; about a quarter fall below 0.7.
        self.confidence = 0.99 - 0.64 * _unit(self._key) ** 3

    def unit(self, path: str) -> float:
        return _unit(self._key, path)

    def enum(self, values: list, path: str) -> Any:
        if len(values) < 2 or not all(isinstance(v, str) for v in values):
            return values[int(self.unit(path) * len(values))] if values else None
        preferred = values[int(self.unit(path) * len(values))]
        by_lower = {v.lower(): v for v in values}
        if sum(s in by_lower for s in _SENTIMENTS) >= 2:
            preferred = by_lower.get(_sentiment(self.text), preferred)
        # The favourite must stay the likeliest value, or temperature 0 would not pick it.
        p = max(self.confidence, 1 / len(values) + 0.02)
        probs = {v: (1 - p) / (len(values) - 1) for v in values}
        probs[preferred] = p
        if self.rng is not None and self.rng.random() >= p:
            return _Pick(self.rng.choice([v for v in values if v != preferred]), probs)
        return _Pick(preferred, probs)


def _instance(schema: Any, root: dict, chooser: _Chooser, path: str = "$", depth: int = 0) -> Any:
    """A value that validates against ``schema`` (the subset structured outputs accept)."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    if "$ref" in schema:  # "#/$defs/Name"
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _instance(target, root, chooser, path, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return chooser.enum(schema["enum"], path)
    for key in ("anyOf", "oneOf", "allOf"):
        if options := schema.get(key):
            present = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _instance((present or options)[0], root, chooser, path, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        return {name: _instance(sub, root, chooser, f"{path}.{name}", depth + 1)
                for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        low = int(schema.get("minItems", 0))
        count = min(max(low, 1), int(schema.get("maxItems", max(low, 1))))
        return [_instance(schema.get("items", {}), root, chooser, f"{path}[{i}]", depth + 1)
                for i in range(count)]
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


def _serialize(instance: Any, break_enum: bool) -> tuple[str, list[tuple[int, _Pick]], bool]:
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
                put(("," if i else "") + _dumps(key) + ":")
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
            put(_dumps(NOT_IN_ENUM if NOT_IN_ENUM not in value.probs else NOT_IN_ENUM + "_not"))
        elif isinstance(value, _Pick):
            spans.append((size + 1, value))
            put(_dumps(value.value))
        else:
            put(_dumps(value))

    write(instance)
    return "".join(parts), spans, broken


@functools.lru_cache(maxsize=4096)
def _first_token(encoding: tiktoken.Encoding, text: str) -> bytes:
    return encoding.decode_single_token_bytes(encoding.encode_ordinary(text)[0])


def _logprobs(encoding: tiktoken.Encoding, content: str, tokens: list[int],
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
                    by_token[_first_token(encoding, prefix + _dumps(value)[1:])] += p
            ranked = sorted(by_token.items(), key=lambda item: -item[1])[:top_k]
            top = [{"token": t.decode("utf-8", "replace"), "logprob": math.log(p), "bytes": list(t)}
                   for t, p in ranked]
            entries.append({"token": text, "logprob": math.log(by_token[raw]), "bytes": list(raw),
                            "top_logprobs": top})
        position = end
    return {"content": entries, "refusal": None}


def _embedding(text: str) -> list[float]:
    """A hashed bag of words, L2-normalised: equal texts get equal vectors, shared words add up."""
    vector = [0.0] * EMBEDDING_DIMS
    for word in _WORD.findall(text.lower()):
        u = _unit("embed", word)
        vector[int(u * EMBEDDING_DIMS)] += 1.0 if int(u * 2 * EMBEDDING_DIMS) % 2 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]


class Simulator:
    """The server: ``start()`` it on a loopback port and point the OpenAI SDK at the URL."""

    def __init__(self, config: SimConfig = SimConfig()) -> None:
        if config.window not in ("second", "minute"):
            raise ValueError(f"window must be 'second' or 'minute', not {config.window!r}")
        self.config = config
        self.stats = SimStats()
        span = 1.0 if config.window == "second" else 60.0
        self._windows = {kind: _Window(limit, span) for kind, limit in
                         (("requests", config.rpm), ("tokens", config.tpm)) if limit}
        # One stream per kind of draw, so turning one on does not reshuffle the others.
        self._error_rng = random.Random(f"{config.seed}:errors")
        self._invalid_rng = random.Random(f"{config.seed}:invalid")
        self._sample_rng = random.Random(f"{config.seed}:sample")
        self._jitter_rng = random.Random(f"{config.seed}:jitter")
        self._clock = time.monotonic  # tests swap in a hand-driven clock
        self._counters: dict[str, TokenCounter] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.add_routes([
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/embeddings", self._embeddings),
            web.get("/v1/models", self._models),
            web.get("/_sim/stats", self._stats),
            web.post("/_sim/reset", self._reset),
        ])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        await self._counter(MODEL_ID)  # load the BPE ranks before the first request arrives
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        return f"http://{host}:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- endpoints ------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        body = await _json_body(request)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) for m in messages)):
            return self._invalid("'messages' must be a non-empty array of objects", "messages")
        try:
            n = int(body.get("n") or 1)
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            max_tokens = None if max_tokens is None else int(max_tokens)
            temperature = body.get("temperature")
            temperature = 1.0 if temperature is None else float(temperature)  # OpenAI's default
            top_k = min(20, int(body.get("top_logprobs") or 0))
        except (TypeError, ValueError):
            return self._invalid("n, max_tokens, temperature, top_logprobs must be numbers", None)
        if not 1 <= n <= 128 or (max_tokens is not None and max_tokens < 1):
            return self._invalid("'n' must be from 1 to 128 and 'max_tokens' at least 1", None)
        model = str(body.get("model") or MODEL_ID)
        counter = await self._counter(model)
        prompt_tokens = counter.count_messages(messages)
        text = _last_user_text(messages)
        if self.config.track_contents:
            self.stats.by_content[text] += 1
        if failure := await self._gate(prompt_tokens + (max_tokens or 0), model):
            return failure

        if REFUSE_MARKER in text:
            message = {"role": "assistant", "content": None, "refusal": REFUSAL}
            choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": "stop"}
                       for i in range(n)]
            completion_tokens = n * counter.count(REFUSAL)
        else:
            want_logprobs = body.get("logprobs") is True and self.config.logprobs
            choices, completion_tokens = [], 0
            seed = body.get("seed")
            for index in range(n):
                rng = None
                if temperature > 0:  # a request seed makes sampling repeatable, as OpenAI tries to
                    rng = (self._sample_rng if seed is None
                           else random.Random(f"{seed}:{text}:{index}"))
                content, spans = self._content(body.get("response_format"),
                                               _Chooser(text, self.config.seed, rng))
                tokens = counter.encoding.encode_ordinary(content)
                finish_reason = "stop"
                if max_tokens is not None and len(tokens) > max_tokens:
                    tokens, finish_reason = tokens[:max_tokens], "length"
                    content = counter.encoding.decode_bytes(tokens).decode("utf-8", "ignore")
                completion_tokens += len(tokens)
                logprobs = None
                if want_logprobs:
                    logprobs = _logprobs(counter.encoding, content, tokens, spans, top_k)
                message = {"role": "assistant", "content": content, "refusal": None}
                choices.append({"index": index, "message": message, "logprobs": logprobs,
                                "finish_reason": finish_reason})
        self.stats.ok += 1
        return self._respond(200, {
            "id": f"chatcmpl-sim{next(self._ids)}", "object": "chat.completion",
            "created": int(time.time()), "model": model, "system_fingerprint": "fp_simulator",
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    async def _embeddings(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        body = await _json_body(request)
        inputs = body.get("input") if isinstance(body, dict) else None
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not (isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs)):
            return self._invalid("'input' must be a string or a non-empty array of strings",
                                 "input")
        model = str(body.get("model") or MODEL_ID)
        counter = await self._counter(model)
        tokens = sum(counter.count(t) for t in inputs)
        if failure := await self._gate(tokens, model):
            return failure
        as_base64 = body.get("encoding_format") == "base64"  # the SDK asks for it by default
        data = []
        for index, text in enumerate(inputs):
            vector: Any = _embedding(text)
            if as_base64:
                vector = base64.b64encode(array("f", vector).tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        self.stats.ok += 1
        return self._respond(200, {"object": "list", "data": data, "model": model,
                                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _models(self, request: web.Request) -> web.Response:
        return self._respond(200, {"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "prelabel-simulator"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        stats = self.stats
        payload: dict[str, Any] = {
            "requests": stats.requests, "ok": stats.ok, "rate_limited": stats.rate_limited,
            "server_errors": stats.server_errors,
            "by_content_max": max(stats.by_content.values(), default=0)}
        if request.query.get("contents") == "1":
            payload["by_content"] = [[text, count] for text, count in stats.by_content.items()]
        return self._respond(200, payload)

    async def _reset(self, request: web.Request) -> web.Response:
        self.stats.requests = self.stats.ok = self.stats.rate_limited = self.stats.server_errors = 0
        self.stats.by_content.clear()
        for window in self._windows.values():
            window.clear()
        return self._respond(200, {"reset": True})

    # --- the steps of a request -----------------------------------------------------------

    async def _counter(self, model: str) -> TokenCounter:
        counter = self._counters.get(model)
        if counter is None:  # a new encoding takes ~0.3 s to load: not on the event loop
            counter = self._counters[model] = await asyncio.to_thread(TokenCounter, model)
        return counter

    async def _gate(self, tokens: int, model: str) -> web.Response | None:
        """What stands between a request and its answer, in OpenAI's order: limits, latency, 5xx."""
        if rejection := self._admit(tokens, model):
            return rejection  # at once: a 429 costs OpenAI no model time either
        config = self.config
        delay = config.latency_s
        if config.jitter_s:
            delay += self._jitter_rng.uniform(-config.jitter_s, config.jitter_s)
        if delay > 0:
            await asyncio.sleep(delay)
        if not config.error_rate or self._error_rng.random() >= config.error_rate:
            return None
        self.stats.server_errors += 1
        return self._respond(self._error_rng.choice((500, 502, 503)), {"error": {
            "message": "The server had an error while processing your request. (simulator)",
            "type": "server_error", "param": None, "code": None}})

    def _admit(self, tokens: int, model: str) -> web.Response | None:
        """None when the request fits every window (and is counted in); else the 429 to send."""
        now = self._clock()
        costs = {"requests": 1, "tokens": tokens}
        waits = {kind: wait for kind, window in self._windows.items()
                 if (wait := window.wait_for(costs[kind], now)) > 0}
        if not waits:
            for kind, window in self._windows.items():
                window.add(costs[kind], now)
            return None
        self.stats.rate_limited += 1
        kind = "requests" if "requests" in waits else "tokens"
        window, wait = self._windows[kind], max(waits.values())
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        message = (f"Rate limit reached for {unit} on {model}: Limit {window.per_minute}, "
                   f"Used {window.used}, Requested {costs[kind]}. Please try again in "
                   f"{_duration(wait)}. (simulator)")
        error = {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}
        return self._respond(429, {"error": error}, {
            "retry-after": str(max(1, math.ceil(wait))),  # whole seconds, for clients without -ms
            "retry-after-ms": str(math.ceil(wait * 1000))})

    def _content(self, response_format: Any, chooser: _Chooser) -> tuple[str, list]:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("json_schema", "json_object"):
            return f"Simulated reply ({_sentiment(chooser.text)}).", []
        schema = (response_format.get("json_schema") or {}).get("schema") or _JSON_OBJECT_SCHEMA
        rate = self.config.invalid_rate
        invalid = bool(rate) and self._invalid_rng.random() < rate
        truncate = invalid and self._invalid_rng.random() < 0.5
        content, spans, broken = _serialize(_instance(schema, schema, chooser),
                                            break_enum=invalid and not truncate)
        if invalid and not broken:  # truncation drawn, or no enum to break
            content = content[: max(1, len(content) // 2)]
        return content, spans

    def _invalid(self, message: str, param: str | None) -> web.Response:
        return self._respond(400, {"error": {"message": message, "type": "invalid_request_error",
                                             "param": param, "code": None}})

    def _respond(self, status: int, payload: dict, extra: dict | None = None) -> web.Response:
        now = self._clock()
        headers = {"Content-Type": "application/json",
                   "x-request-id": f"req_sim{next(self._ids):012d}"}
        for kind, window in self._windows.items():
            headers[f"x-ratelimit-limit-{kind}"] = str(window.per_minute)
            headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining(now))
            headers[f"x-ratelimit-reset-{kind}"] = _duration(window.reset_in(now))
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=_dumps(payload).encode(), headers=headers)


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError:  # bad JSON or bad UTF-8: answered like a body without messages
        return None


def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run a simulator until SIGINT/SIGTERM (for ``prelabel simulate``)."""
    asyncio.run(_serve(config, host, port))


async def _serve(config: SimConfig, host: str, port: int) -> None:
    simulator = Simulator(config)
    url = await simulator.start(host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    print(f"prelabel simulator (a stand-in, not a model) listening on {url}", flush=True)
    try:
        await stopping.wait()
    finally:
        await simulator.stop()
