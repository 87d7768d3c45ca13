"""The simulator's HTTP side: OpenAI's endpoints on aiohttp, latency, limits, 5xx, statistics.

Limits are enforced in one of the styles users meet (``SimConfig.style``): ``openai`` (a rolling
window, headers per minute, 429 with ``retry-after-ms`` and a whole-second ``retry-after``),
``azure`` (a quota per minute that resets on the minute, 429 with ``retry-after`` to the reset),
``bucket`` (a token bucket with one second of burst) and ``gateway`` (a rolling second, but no
rate-limit headers and a 429 without ``retry-after``: the client has to find the rate itself). A
``capacity`` makes it a self-hosted server instead: ``capacity`` requests are served at once, the
rest queue (latency grows), and past ``queue_limit`` in flight it answers 503. As llama.cpp's servers
do, it works on to the end of a request whose client gave up (a timeout): the request keeps its seat
and the ones behind it wait for it (``SimStats.abandoned`` counts them).
"""
from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import itertools
import json
import math
import random
import signal
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from ..budget.tokens import TokenCounter
from .answers import (JSON_OBJECT_SCHEMA, MODEL_ID, REFUSAL, REFUSE_MARKER, Chooser, dumps, embedding, instance,
                      last_user_text, sentiment, serialize, token_logprobs)
from . import gaps as gaps_
from .gaps import Gaps
from .batches import BatchConfig, Batches
from .limits import FixedWindow, TokenBucket, Window, duration
from ..llm.endpoint import SIMULATOR_HEADER

STYLES = ("openai", "azure", "bucket", "gateway")
from .rewrite import rewrite_answer


@dataclass(frozen=True)
class SimConfig:
    latency_s: float = 0.2  # mean time before a 200/5xx answer
    jitter_s: float = 0.0  # uniform +/- around latency_s (never below 0)
    rpm: int | None = None  # None = unlimited
    tpm: int | None = None  # prompt tokens + max_tokens, as OpenAI estimates
    window: str = "second"  # "second": limit/60 per rolling 1 s, as OpenAI enforces; "minute"
    style: str = "openai"  # how limits are enforced and reported: one of STYLES (``window`` is openai's)
    error_rate: float = 0.0  # share of admitted requests answered 500/502/503 (they count against the limits)
    capacity: int | None = None  # requests served at once (a self-hosted server); the rest wait their turn
    queue_limit: int | None = None  # with ``capacity``: past this many in flight, 503 at once
    logprobs: bool = True  # False: an endpoint that never returns logprobs
    invalid_rate: float = 0.0  # share of JSON answers that break the schema
    seed: int = 0
    track_contents: bool = True  # count requests per last user message (tests); off for benchmarks
    identify: bool = True  # say "a simulator" in every response (SIMULATOR_HEADER); False: pose as a real endpoint
    gaps: Gaps = Gaps()  # behave like a self-hosted server that lacks some capabilities
    batch: BatchConfig = BatchConfig()  # the Files and Batches endpoints (prelabel.simulator.batches)
    # OpenAI's prompt caching: a prompt whose leading messages (at least this many tokens) were sent
    # before reports them as usage.prompt_tokens_details.cached_tokens; None: no prompt cache
    prompt_cache_min_tokens: int | None = 1024


@dataclass
class SimStats:
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    overloaded: int = 0  # 503s for a full queue (capacity mode)
    abandoned: int = 0  # answers made for a client that had gone (a timeout): served to the end all the same
    admitted: int = 0  # requests the limits let through (answered 200 or 5xx)
    first_admit: float | None = None
    last_admit: float | None = None
    last_ok: float | None = None
    max_gap: float = 0.0  # the longest time between two admissions
    by_content: collections.Counter = field(default_factory=collections.Counter)
    answered: collections.Counter = field(default_factory=collections.Counter)  # 200s sent, per content
    # per whole second of the server's clock: requests that arrived, and those the limits let through
    arrived_per_s: collections.Counter = field(default_factory=collections.Counter)
    admitted_per_s: collections.Counter = field(default_factory=collections.Counter)
    # admissions per tenth of a second (what a benchmark reads a ramp-up or a hand-over from)
    admitted_per_ds: collections.Counter = field(default_factory=collections.Counter)


class Simulator:
    """The server: ``start()`` it on a loopback port and point the OpenAI SDK at the URL."""

    def __init__(self, config: SimConfig = SimConfig(), *, batch_clock: Callable[[], float] = time.time) -> None:
        if config.window not in ("second", "minute"):
            raise ValueError(f"window must be 'second' or 'minute', not {config.window!r}")
        if config.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, not {config.style!r}")
        self.config = config
        self.stats = SimStats()
        self._windows = {kind: _limit(config, limit) for kind, limit in
                         (("requests", config.rpm), ("tokens", config.tpm)) if limit}
        self._in_flight = 0
        self._serving = asyncio.Semaphore(config.capacity) if config.capacity else None
        # One stream per kind of draw, so turning one on does not reshuffle the others.
        self._error_rng = random.Random(f"{config.seed}:errors")
        self._invalid_rng = random.Random(f"{config.seed}:invalid")
        self._sample_rng = random.Random(f"{config.seed}:sample")
        self._jitter_rng = random.Random(f"{config.seed}:jitter")
        self._clock = time.monotonic  # tests swap in a hand-driven clock
        self._counters: dict[str, TokenCounter] = {}
        self._ids = itertools.count(1)
        self._prefixes: collections.OrderedDict[bytes, None] = collections.OrderedDict()  # prompt cache
        self._runner: web.AppRunner | None = None
        self.batches = Batches(self, config.batch, seed=config.seed, clock=batch_clock)
        self.app = web.Application()
        self.app.add_routes(self.batches.routes())
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
        self.stats.arrived_per_s[int(self._clock())] += 1
        response = await self.answer_chat(await _json_body(request), self._gate, self._respond)
        if request.transport is None or request.transport.is_closing():
            self.stats.abandoned += 1
        return response

    async def answer_chat(self, body: Any, gate, respond):
        """A chat request's answer (``respond(status, payload[, headers])``), past ``gate`` (None:
        a batch line, which meets no rate limit or latency); live requests and batch lines share it."""
        messages = body.get("messages") if isinstance(body, dict) else None
        if not (isinstance(messages, list) and messages
                and all(isinstance(m, dict) for m in messages)):
            return self._invalid("'messages' must be a non-empty array of objects", "messages", respond)
        try:
            n = int(body.get("n") or 1)
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
            max_tokens = None if max_tokens is None else int(max_tokens)
            temperature = body.get("temperature")
            temperature = 1.0 if temperature is None else float(temperature)  # OpenAI's default
            top_k = min(20, int(body.get("top_logprobs") or 0))
        except (TypeError, ValueError):
            return self._invalid("n, max_tokens, temperature, top_logprobs must be numbers", None, respond)
        if not 1 <= n <= 128 or (max_tokens is not None and max_tokens < 1):
            return self._invalid("'n' must be from 1 to 128 and 'max_tokens' at least 1", None, respond)
        if refused := gaps_.refusal(self.config.gaps, body):
            return respond(*refused)
        n = gaps_.choices_to_make(self.config.gaps, n)
        body = {**body, "response_format": gaps_.response_format(body.get("response_format"))}
        model = str(body.get("model") or MODEL_ID)
        counter = await self._counter(model)
        prompt_tokens = counter.count_messages(messages)
        text = last_user_text(messages)
        if self.config.track_contents:
            self.stats.by_content[text] += 1
        if gate is not None and (failure := await gate(prompt_tokens + (max_tokens or 0), model)):
            return failure

        if REFUSE_MARKER in text:
            message = {"role": "assistant", "content": None, "refusal": REFUSAL}
            choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": "stop"}
                       for i in range(n)]
            completion_tokens = n * counter.count(REFUSAL)
        else:
            want_logprobs = (body.get("logprobs") is True and self.config.logprobs
                             and gaps_.wants_logprobs(self.config.gaps, body))
            choices, completion_tokens = [], 0
            seed = body.get("seed")
            for index in range(n):
                rng = None
                if temperature > 0:  # a request seed makes sampling repeatable, as OpenAI tries to
                    rng = (self._sample_rng if seed is None
                           else random.Random(f"{seed}:{text}:{index}"))
                content = rewrite_answer(body.get("response_format"), messages[0].get("content") or "", text, index)
                spans = []
                if content is None:
                    content, spans = self._content(body.get("response_format"),
                                                   Chooser(text, self.config.seed, rng))
                tokens = counter.encoding.encode_ordinary(content)
                finish_reason = "stop"
                if max_tokens is not None and len(tokens) > max_tokens:
                    tokens, finish_reason = tokens[:max_tokens], "length"
                    content = counter.encoding.decode_bytes(tokens).decode("utf-8", "ignore")
                completion_tokens += len(tokens)
                logprobs = None
                if want_logprobs:
                    logprobs = token_logprobs(counter.encoding, content, tokens, spans, top_k)
                    if self.config.gaps.pre_constraint_logprobs:
                        logprobs = gaps_.pre_constraint(logprobs)
                message = {"role": "assistant", "content": content, "refusal": None}
                choices.append({"index": index, "message": message, "logprobs": logprobs,
                                "finish_reason": finish_reason})
        self.stats.ok += 1
        if self.config.track_contents:
            self.stats.answered[text] += 1
        payload = {
            "id": f"chatcmpl-sim{next(self._ids)}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_simulator" if self.config.identify else "fp_0000000000",
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": self._cached_prefix(messages, counter)}},
        }
        if self.config.gaps.no_usage:
            del payload["usage"]
        return respond(200, payload)

    def _cached_prefix(self, messages: list, counter) -> int:
        """Tokens of the longest run of leading messages sent before (whole messages, as a stand-in
        for OpenAI's 128-token blocks), if it reaches ``prompt_cache_min_tokens``; then remembered."""
        minimum = gaps_.prompt_cache_min(self.config.gaps, self.config.prompt_cache_min_tokens)
        whole = self.config.gaps.cached_tokens == "any"  # llama.cpp: a repeated prompt is all cached
        if minimum is None or (len(messages) < 2 and not whole):
            return 0
        keys = []
        digest = hashlib.blake2b(digest_size=16)
        for message in messages if whole else messages[:-1]:
            digest.update(json.dumps(message, sort_keys=True, default=str).encode())
            keys.append(digest.copy().digest())
        shared = 0
        for k, key in enumerate(keys, 1):
            if key not in self._prefixes:
                break
            shared = k
        for key in keys:
            self._prefixes[key] = None
            self._prefixes.move_to_end(key)
        while len(self._prefixes) > 50_000:
            self._prefixes.popitem(last=False)
        if not shared:
            return 0
        tokens = counter.count_messages(messages[:shared])
        if whole and shared == len(messages):
            tokens -= 1  # the last prompt token is always evaluated again
        return tokens if tokens >= minimum else 0

    async def _embeddings(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        return await self.answer_embeddings(await _json_body(request), self._gate, self._respond)

    async def answer_embeddings(self, body: Any, gate, respond):
        """An embeddings request's answer, as ``answer_chat``."""
        if refused := gaps_.embeddings_refusal(self.config.gaps):  # llama.cpp without --embeddings, vLLM's chat model
            return respond(*refused)
        inputs = body.get("input") if isinstance(body, dict) else None
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not (isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs)):
            return self._invalid("'input' must be a string or a non-empty array of strings",
                                 "input", respond)
        model = str(body.get("model") or MODEL_ID)
        counter = await self._counter(model)
        tokens = sum(counter.count(t) for t in inputs)
        if gate is not None and (failure := await gate(tokens, model)):
            return failure
        as_base64 = body.get("encoding_format") == "base64"  # the SDK asks for it by default
        data = []
        for index, text in enumerate(inputs):
            vector: Any = embedding(text)
            if self.config.gaps.per_token_embeddings:  # llama-cpp-python: one vector per token
                vector = [vector for _ in text.split()] or [vector]
            elif as_base64:
                vector = base64.b64encode(array("f", vector).tobytes()).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        self.stats.ok += 1
        return respond(200, {"object": "list", "data": data, "model": model,
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
        if request.query.get("admissions") == "1":  # what the benchmarks measure the client by
            payload.update(overloaded=stats.overloaded, admitted=stats.admitted, first_admit=stats.first_admit,
                           last_admit=stats.last_admit, last_ok=stats.last_ok, max_gap_s=round(stats.max_gap, 4))
        if request.query.get("seconds") == "1":  # [second from the first, arrived, admitted], every second
            first = min(stats.arrived_per_s, default=0)
            last = max(stats.arrived_per_s, default=-1)
            payload["per_second"] = [[t - first, stats.arrived_per_s[t], stats.admitted_per_s[t]]
                                     for t in range(first, last + 1)]
        if request.query.get("tenths") == "1" and stats.first_admit is not None:
            # [tenth of a second from the first admission's, admitted], every tenth to the last's
            first, last = int(stats.first_admit * 10), int(stats.last_admit * 10)
            payload["admitted_per_tenth"] = [[t - first, stats.admitted_per_ds[t]] for t in range(first, last + 1)]
        if request.query.get("contents") == "1":
            payload["by_content"] = [[text, count] for text, count in stats.by_content.items()]
            payload["answered_by_content"] = [[text, count] for text, count in stats.answered.items()]
        return self._respond(200, payload)

    async def _reset(self, request: web.Request) -> web.Response:
        self.stats = SimStats()
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
        if self._serving is not None:
            if config.queue_limit and self._in_flight >= config.queue_limit:
                self.stats.overloaded += 1
                return self._respond(503, {"error": {
                    "message": "The server is overloaded: too many requests in its queue. (simulator)",
                    "type": "server_error", "param": None, "code": None}})
            self._in_flight += 1
            try:
                async with self._serving:  # past ``capacity`` a request waits for a free seat
                    await self._latency()
            finally:
                self._in_flight -= 1
        else:
            await self._latency()
        if not config.error_rate or self._error_rng.random() >= config.error_rate:
            self.stats.last_ok = self._clock()
            return None
        self.stats.server_errors += 1
        return self._respond(self._error_rng.choice((500, 502, 503)), {"error": {
            "message": "The server had an error while processing your request. (simulator)",
            "type": "server_error", "param": None, "code": None}})

    async def _latency(self) -> None:
        delay = self.config.latency_s
        if self.config.jitter_s:
            delay += self._jitter_rng.uniform(-self.config.jitter_s, self.config.jitter_s)
        if delay > 0:
            await asyncio.sleep(delay)

    def _admit(self, tokens: int, model: str) -> web.Response | None:
        """None when the request fits every window (and is counted in); else the 429 to send."""
        now = self._clock()
        costs = {"requests": 1, "tokens": tokens}
        waits = {kind: wait for kind, window in self._windows.items()
                 if (wait := window.wait_for(costs[kind], now)) > 0}
        if not waits:
            for kind, window in self._windows.items():
                window.add(costs[kind], now)
            stats = self.stats
            stats.admitted += 1
            stats.admitted_per_s[int(now)] += 1
            stats.admitted_per_ds[int(now * 10)] += 1
            if stats.last_admit is not None:
                stats.max_gap = max(stats.max_gap, now - stats.last_admit)
            else:
                stats.first_admit = now
            stats.last_admit = now
            return None
        self.stats.rate_limited += 1
        kind = "requests" if "requests" in waits else "tokens"
        window, wait = self._windows[kind], max(waits.values())
        unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
        message = (f"Rate limit reached for {unit} on {model}: Limit {window.per_minute}, "
                   f"Used {window.used}, Requested {costs[kind]}. Please try again in "
                   f"{duration(wait)}. (simulator)")
        error = {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}
        style = self.config.style
        if style == "gateway":  # a proxy's bare 429: no hint how long to wait
            error["message"] = "Too many requests. (simulator)"
            return self._respond(429, {"error": error})
        extra = {"retry-after": str(max(1, math.ceil(wait)))}  # whole seconds, for clients without -ms
        if style != "azure":  # Azure says only when the minute's quota starts again
            extra["retry-after-ms"] = str(math.ceil(wait * 1000))
        return self._respond(429, {"error": error}, extra)

    def _content(self, response_format: Any, chooser: Chooser) -> tuple[str, list]:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind not in ("json_schema", "json_object"):
            return f"Simulated reply ({sentiment(chooser.text)}).", []
        schema = (response_format.get("json_schema") or {}).get("schema") or JSON_OBJECT_SCHEMA
        rate = self.config.invalid_rate
        invalid = bool(rate) and self._invalid_rng.random() < rate
        truncate = invalid and self._invalid_rng.random() < 0.5
        content, spans, broken = serialize(instance(schema, schema, chooser),
                                            break_enum=invalid and not truncate)
        if invalid and not broken:  # truncation drawn, or no enum to break
            content = content[: max(1, len(content) // 2)]
        return content, spans

    def _invalid(self, message: str, param: str | None, respond=None) -> web.Response:
        return (respond or self._respond)(400, {"error": {"message": message, "type": "invalid_request_error",
                                             "param": param, "code": None}})

    def _respond(self, status: int, payload: dict, extra: dict | None = None) -> web.Response:
        now = self._clock()
        headers = {"Content-Type": "application/json",
                   "x-request-id": f"req_sim{next(self._ids):012d}"}
        if self.config.identify:
            headers[SIMULATOR_HEADER] = "1"
        if self.config.style != "gateway":  # a gateway says nothing about its limits
            for kind, window in self._windows.items():
                headers[f"x-ratelimit-limit-{kind}"] = str(window.per_minute)
                headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining(now))
                headers[f"x-ratelimit-reset-{kind}"] = duration(window.reset_in(now))
        if extra:
            headers.update(extra)
        return web.Response(status=status, body=dumps(payload).encode(), headers=headers)


def _limit(config: SimConfig, per_minute: int):
    if config.style == "azure":
        return FixedWindow(per_minute)
    if config.style == "bucket":
        return TokenBucket(per_minute, burst_s=1.0)
    return Window(per_minute, 1.0 if config.window == "second" else 60.0)


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
