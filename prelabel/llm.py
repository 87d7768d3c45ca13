"""The LLM engine: one chat request at a time, paced, retried, cached.

It owns the transient-failure retries (``prelabel.retry`` decides, tenacity carries it out), the
pacing (``prelabel.ratelimit``) and cache look-ups; the SDK client it sends through comes from
``prelabel.client``, with the SDK's own retries off. Responses are read from the raw body into a
``Completion`` without building the SDK's pydantic models.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import openai
from tenacity import AsyncRetrying, retry_if_exception

from .client import request_template, send_json
from .completion import Completion
from .config import Engine as EngineSettings
from .config import ModelSpec
from .errors import LLMError
from .ratelimit import RateLimiter, rate_headers
from .retry import Failure, RetryDecision, decide
from .stats import RunStats

log = logging.getLogger(__name__)


class _AttemptFailed(Exception):
    def __init__(self, failure: Failure, decision: RetryDecision, cause: Exception, attempt: int) -> None:
        super().__init__(decision.reason)
        self.failure, self.decision, self.cause, self.attempt = failure, decision, cause, attempt


@dataclass(frozen=True, slots=True)
class Prepared:
    body: bytes                  # what is sent
    key: str                     # its cache key
    cached: Completion | None    # the stored answer, if any: then nothing is sent


def encode_request(request: dict) -> tuple[bytes, str]:
    """The request body as sent, and its cache key: one serialisation serves both."""
    body = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return body, hashlib.sha256(body).hexdigest()


class LLMEngine:
    def __init__(self, client: openai.AsyncOpenAI, model: ModelSpec, settings: EngineSettings,
                 cache_get: Callable[[str], dict | None], *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.client, self.model, self.settings = client, model, settings
        self.limiter = RateLimiter(model.rpm, model.tpm, settings.rate_headroom)
        self.stats = RunStats()
        self._template = request_template(client)
        self._cache_get, self._sleep, self._clock = cache_get, sleep, clock
        self._rng = rng or random.Random()

    def request(self, messages: list[dict], response_format: dict | None, max_tokens: int) -> dict:
        body = {"model": self.model.name, "messages": messages, "temperature": self.model.temperature,
                "max_tokens": max_tokens}
        if response_format is not None:
            body["response_format"] = response_format
        if self.model.logprobs:
            body["logprobs"] = True
        if self.model.seed is not None:
            body["seed"] = self.model.seed
        return body

    def prepare(self, request: dict) -> Prepared:
        """Serialise the request once, and look for its answer in the cache."""
        body, key = encode_request(request)
        cached = self._cache_get(key)
        if cached is not None:
            self.stats.cache_hits += 1
            return Prepared(body, key, Completion.from_cache(cached))
        return Prepared(body, key, None)

    async def send(self, prepared: Prepared, booked_tokens: int) -> Completion:
        """Send it, paced and retried; raises LLMError when it fails for good.

        ``booked_tokens`` is the request's worst case (prompt + max output) for the token pacing;
        what the usage shows was not used is given back.
        """
        try:
            try:
                completion = await self._attempt(prepared.body, booked_tokens, 1)
            except _AttemptFailed as first:
                # Most requests succeed at once; tenacity takes over only when one did not.
                if not first.decision.retry:
                    raise
                completion = await self._retry(prepared.body, booked_tokens, first)
        except _AttemptFailed as e:
            raise LLMError(f"request failed: {e.decision.reason}: {e.cause}", status=e.failure.status,
                           attempts=e.attempt) from e.cause
        self.limiter.refund(booked_tokens - completion.prompt_tokens - completion.completion_tokens, self._clock())
        return completion

    async def _retry(self, body: bytes, booked: int, first: _AttemptFailed) -> Completion:
        retrying = AsyncRetrying(retry=retry_if_exception(lambda e: isinstance(e, _AttemptFailed) and e.decision.retry),
                                 wait=lambda state: state.outcome.exception().decision.delay,
                                 sleep=self._sleep, reraise=True)
        await self._sleep(first.decision.delay)
        async for attempt in retrying:
            with attempt:
                self.stats.retries += 1
                return await self._attempt(body, booked, attempt.retry_state.attempt_number + 1)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _attempt(self, body: bytes, booked: int, attempt: int) -> Completion:
        # The pause may grow while we wait (another request got a 429): wait until it holds.
        delay = self.limiter.reserve(booked, self._clock())
        while delay > 0:
            await self._sleep(delay)
            now = self._clock()
            delay = self.limiter.paused_until - now
        self.stats.requests += 1
        try:
            raw = await send_json(self.client, self._template, body)
        except openai.APIStatusError as e:
            headers = rate_headers(e.response.headers.raw)
            self._observe(headers)
            failure = Failure(e.status_code, headers, getattr(e, "code", None))
            if e.status_code == 429:
                self.stats.rate_limited += 1
            elif e.status_code >= 500:
                self.stats.server_errors += 1
            raise self._failed(failure, attempt, e) from e
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            self.stats.timeouts += 1
            raise self._failed(Failure(None, {}), attempt, e) from e
        headers = rate_headers(raw.headers.raw)
        self._observe(headers)
        try:
            return Completion.from_response(json.loads(raw.content))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            # A 200 with a body that is not a chat completion: a broken proxy; treat it as a 502.
            raise self._failed(Failure(502, headers), attempt, e) from e

    def _observe(self, headers: dict[str, str]) -> None:
        limits = (self.limiter.rpm, self.limiter.tpm)
        self.limiter.observe(headers, self._clock())
        if (self.limiter.rpm, self.limiter.tpm) != limits:
            log.info("the server reports lower limits: pacing to %d requests and %d tokens a minute",
                     self.limiter.rpm, self.limiter.tpm)

    def _failed(self, failure: Failure, attempt: int, cause: Exception) -> _AttemptFailed:
        decision = decide(failure, attempt, max_retries=self.model.max_retries,
                          base=self.settings.retry_base_s, cap=self.settings.retry_max_s, rng=self._rng)
        if decision.retry:
            log.info("attempt %d failed (%s); retrying in %.2fs", attempt, decision.reason, decision.delay)
        else:
            log.warning("request failed for good after %d attempt(s): %s: %s", attempt, decision.reason, cause)
        if decision.retry and failure.status == 429:
            # Everyone waits, not just this request: the window is shared.
            self.limiter.pause(decision.server_wait or decision.delay, self._clock())
        return _AttemptFailed(failure, decision, cause, attempt)
