"""The LLM engine: chat requests and embeddings, paced, retried, cached.

It owns the transient-failure retries (``prelabel.llm.retry`` decides, tenacity carries it out), the
pacing (``prelabel.llm.pacing``), ``max_concurrency: auto`` (``prelabel.llm.concurrency``) and cache
look-ups; the SDK client it sends through comes from ``prelabel.llm.client``, with the SDK's own retries
off. Responses are read from the raw body into a ``Completion`` (or vectors) without building the
SDK's pydantic models.
"""
from __future__ import annotations

import asyncio
import base64
import errno
import contextvars
import hashlib
import json
import logging
import random
import time
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, NamedTuple, Sequence

from tenacity import AsyncRetrying, retry_if_exception

from . import capabilities as caps_
from .capabilities import Capabilities
from .client import CHAT_PATH, EMBEDDINGS_PATH, request_template, send_json
from .completion import Completion, cached_prompt_tokens
from .concurrency import TIMEOUT_CUT, AdaptiveSlots, VegasLimit
from ..config import AUTO_MAX_CONCURRENCY, AUTO_MAX_RTT_SHARE
from ..config import EngineSettings
from ..config import ModelSpec
from .endpoint import SIMULATOR_HEADER, normalise_url
from ..errors import (CapabilityRefused, EmbeddingsUnavailable, LeaseLost, LLMError, MalformedAnswer,
                      RateLimitWaitExceeded)
from .pacing import RateLimiter, rate_headers
from ..redact import redact
from .retry import MALFORMED, Failure, RetryDecision, decide
from .stats import RunStats
from ..budget.tokens import TokenCounter

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Tries:
    """One request's history: what its retry decisions are made from."""

    sent: int = 0                     # attempts sent
    failures: int = 0                 # failed other than by 429 (bounded by model.max_retries)
    first_429: float | None = None    # when the limit first refused it (waiting is bounded by time)


def _reason(cause: BaseException) -> str:
    """What went wrong, as a person can act on it: the SDK's "Connection error." with the reason
    underneath it (refused, no such host), not alone."""
    text = str(cause)
    inner = cause.__cause__
    if inner is not None and str(inner) and str(inner) not in text:
        text = f"{text} ({inner})"
    return text


def _refused(error: BaseException) -> bool:
    """Whether a connection error was a refusal (ECONNREFUSED somewhere in its causes)."""
    for _ in range(8):  # the SDK's error, httpx's, aiohttp's, the OS's
        if error is None:
            return False
        if isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == errno.ECONNREFUSED:
            return True
        error = error.__cause__ or error.__context__
    return False


class _AttemptFailed(Exception):
    def __init__(self, failure: Failure, decision: RetryDecision, cause: Exception, attempt: int,
                 answered: bytes | None = None) -> None:
        super().__init__(decision.reason)
        self.failure, self.decision, self.cause, self.attempt = failure, decision, cause, attempt
        self.answered = answered  # the body of a malformed 200: what it reports it cost


@dataclass(frozen=True, slots=True)
class Prepared:
    body: bytes                  # what is sent
    key: str                     # its cache key
    cached: Completion | None    # the stored answer, if any: then nothing is sent
    request: dict | None = None  # as built, before it is adapted to the endpoint's capabilities


def encode_request(request: dict, identity: str) -> tuple[bytes, str]:
    """The request body as sent, and its cache key: one serialisation serves both."""
    body = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return body, cache_key(identity, body)


def cache_key(identity: str, body: bytes) -> str:
    """What answers (the endpoint's identity; the model is in the body) and what was asked: an
    answer is only ever served again for the same request to the same endpoint."""
    return hashlib.sha256(identity.encode() + b"\0" + body).hexdigest()


# Awaited after pacing, as each attempt of a chat request is about to go out (set by the caller, per
# request, in its task's context): it may raise to give the request up, and then nothing is sent.
# The live executor asks there whether the worker still holds the item's lease: a worker resumed
# after a pause (SIGSTOP) must not send requests paced before it for items another worker now has.
BEFORE_SEND: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "prelabel_before_send", default=None)


# Statuses that mean "no embeddings here" (no route, unknown model, method not allowed): not a
# transient failure, and nothing to retry; ``similar`` examples use lexical similarity instead.
NO_EMBEDDINGS_STATUS = frozenset({404, 405, 501})


@dataclass(frozen=True, slots=True)
class PreparedEmbeddings:
    """Texts to embed, looked up in the cache: what is missing costs ``tokens_to_send``."""

    model: str
    keys: list[str]                   # each text's cache key
    vectors: list[array | None]       # float32, from the cache; None: to be fetched
    texts: list[str]                  # as sent: cut to the endpoint's input limit
    tokens: list[int]                 # estimated tokens of each text to fetch (0 when cached)

    @property
    def tokens_to_send(self) -> int:
        return sum(self.tokens)


@dataclass(slots=True)
class Embeddings:
    """One vector per text (None where a request failed), what was billed, and what to cache."""

    vectors: list[array | None]
    prompt_tokens: int                       # billed for the requests that were answered
    to_store: list[tuple[str, dict] | None]  # a new cache entry per text; None: it came from the cache
    error: LLMError | None = None            # the first failure (EmbeddingsUnavailable: none here)


def embeddings_request(model: str, texts: Sequence[str]) -> dict:
    """An embeddings request as sent (live, or as a batch line): vectors asked as base64."""
    return {"model": model, "input": list(texts), "encoding_format": "base64"}


def embedding_batches(tokens: Sequence[int], max_texts: int, max_tokens: int) -> list[list[int]]:
    """Positions grouped into requests of at most ``max_texts`` texts and ``max_tokens`` tokens
    (a text larger than that goes alone)."""
    batches: list[list[int]] = []
    current, size = [], 0
    for position, count in enumerate(tokens):
        if current and (len(current) >= max_texts or size + count > max_tokens):
            batches.append(current)
            current, size = [], 0
        current.append(position)
        size += count
    if current:
        batches.append(current)
    return batches


def _vector(value: Any) -> array:
    """A float32 vector from base64 (what we ask for) or a JSON list (servers that ignore that)."""
    vector = array("f")
    if isinstance(value, str):
        vector.frombytes(base64.b64decode(value, validate=True))
    elif isinstance(value, list):
        vector.fromlist([float(x) for x in value])
    if not vector:
        raise ValueError("an embedding is empty or neither base64 nor a list of numbers")
    return vector


def _encoded(vector: array) -> str:
    return base64.b64encode(vector.tobytes()).decode("ascii")


def parse_embeddings(content: bytes, count: int) -> tuple[list[array], int | None]:
    """The vectors of an embeddings response in input order, and the prompt tokens it reports."""
    body = json.loads(content)
    data = sorted(body["data"], key=lambda d: d["index"])
    if [d["index"] for d in data] != list(range(count)):
        raise ValueError(f"expected {count} embeddings indexed 0..{count - 1}")
    vectors = [_vector(d["embedding"]) for d in data]
    if len({len(v) for v in vectors}) != 1:
        raise ValueError("embeddings of different lengths in one response")
    usage = body.get("usage") or {}
    reported = usage.get("prompt_tokens")
    return vectors, reported if isinstance(reported, int) else None


def _completion(raw) -> Completion:
    completion = Completion.from_response(json.loads(raw.content))
    completion.simulated = SIMULATOR_HEADER in raw.headers
    return completion


def _sent(status: int, body: bytes) -> dict | None:
    """The request a refusal answered, for ``retry.decide`` to read which of its parameters a
    refusal names (parsed only for the statuses that may be one)."""
    if status not in caps_.CAPABILITY_STATUS:
        return None
    try:
        request = json.loads(body)
    except ValueError:
        return None
    return request if isinstance(request, dict) else None


def answered_usage(content: bytes) -> tuple[tuple[int, int, int] | None, str]:
    """What a 200 that is not the answer asked for reports it cost, (prompt, completion, cached
    prompt) tokens or None, and any answer text in it (for a count of our own when it reports none)."""
    try:
        body = json.loads(content)
    except ValueError:
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    usage = body.get("usage")
    reported = None
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        completion = usage.get("completion_tokens")
        reported = (usage["prompt_tokens"], completion if isinstance(completion, int) else 0, cached_prompt_tokens(usage))
    texts = []
    for choice in body.get("choices") if isinstance(body.get("choices"), list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            texts.append(message["content"])
    return reported, "".join(texts)


def _merged(completions: Sequence[Completion]) -> Completion:
    """Samples asked apart, as one completion of several choices (usage summed)."""
    first = completions[0]
    samples = [s for c in completions for s in c.all_samples()]
    return Completion(first.content, first.refusal, first.finish_reason, first.logprobs,
                      sum(c.prompt_tokens for c in completions), sum(c.completion_tokens for c in completions),
                      first.model, usage_reported=all(c.usage_reported for c in completions),
                      samples=samples if len(samples) > 1 else None,
                      simulated=any(c.simulated for c in completions),
                      cached_prompt_tokens=sum(c.cached_prompt_tokens for c in completions),
                      requests=sum(c.requests for c in completions))


class _Endpoint(NamedTuple):
    path: str
    template: Any  # from client.request_template


# Endpoints (by identity) that said in this process they are a simulator: their cached answers may
# be served to them. A new process asks a hand-started simulator again until its first answer.
_SAID_SIMULATOR: set[str] = set()


def said_simulator(identity: str, simulated: bool) -> None:
    """What an endpoint said it is, learned outside a chat answer (the Batch API's Files, by header)."""
    if simulated:
        _SAID_SIMULATOR.add(identity)
    else:
        _SAID_SIMULATOR.discard(identity)


class LLMEngine:
    """``identity`` names what answers (``prelabel.llm.endpoint``; by default the client's base URL), in
    every cache key; ``simulated``: the built-in simulator answers, so every answer is marked so."""

    def __init__(self, client: openai.AsyncOpenAI, model: ModelSpec, settings: EngineSettings,
                 cache_get: Callable[[str], dict | None], *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 identity: str | None = None, simulated: bool = False,
                 capabilities: Capabilities | None = None) -> None:
        self.client, self.model, self.settings = client, model, settings
        self.identity = identity or normalise_url(str(client.base_url))
        self.simulated = simulated
        self.limiter = RateLimiter(model.rpm, model.tpm, settings.rate_headroom, settings.rate_recovery)
        self.slots = (AdaptiveSlots(VegasLimit(AUTO_MAX_CONCURRENCY, max_rtt=model.timeout_s * AUTO_MAX_RTT_SHARE))
                      if model.max_concurrency == "auto" else None)
        self.stats = RunStats()
        self._answered = False  # whether the endpoint has answered once (any status): see Failure.refused_unanswered
        self._refusing = False  # a request was given up as refused_unanswered (until an answer comes)
        self._chat = _Endpoint(CHAT_PATH, request_template(client))
        self._embeddings = _Endpoint(EMBEDDINGS_PATH, request_template(client, EMBEDDINGS_PATH))
        self._cache_get, self._sleep, self._clock = cache_get, sleep, clock
        self._rng = rng or random.Random()
        import openai  # loaded with the client this engine was given: the SDK's errors, bound once

        self._status_error = openai.APIStatusError
        self._connection_errors = (openai.APITimeoutError, openai.APIConnectionError)

        # What the endpoint can do, learned as requests are refused or answered: ``caps`` is what
        # requests are adapted to, ``kept`` what answers showed of it (a refusal gives a capability
        # up in ``caps`` at once, in ``kept`` once a request without it was answered). The worker
        # keeps ``kept`` in the store under ``caps_key`` (the endpoint's identity and the model, never the key).
        self.caps_key = caps_.store_key(self.identity, model.name)
        self.use_capabilities(capabilities or Capabilities())

    def use_capabilities(self, caps: Capabilities) -> None:
        """Start from what earlier runs (or ``prelabel probe``) learned of the endpoint."""
        self.caps = caps
        self.kept = Capabilities.from_json(caps.to_json())

    def request(self, messages: list[dict], response_format: dict | None, max_tokens: int, n: int = 1,
                temperature: float | None = None) -> dict:
        """A chat request; ``n`` > 1 asks several samples at once (``max_tokens`` is per sample)."""
        body = {"model": self.model.name, "messages": messages,
                "temperature": self.model.temperature if temperature is None else temperature,
                "max_tokens": max_tokens}
        if n > 1:
            body["n"] = n
        if response_format is not None:
            body["response_format"] = response_format
        if self.model.logprobs:
            body["logprobs"] = True
            if self.settings.top_logprobs > 0:
                # 0 gives no logprobs at all on llama.cpp's servers; the alternatives are what a
                # label's confidence is computed from (prelabel.checks.labelscore).
                body["top_logprobs"] = self.settings.top_logprobs
        if self.model.seed is not None:
            body["seed"] = self.model.seed
        return body

    def prepare(self, request: dict) -> Prepared:
        """Serialise the request once, and look for its answer in the cache."""
        body, key = encode_request(request, self.identity)
        return self.prepared(request, body, key, self._cache_get(key))

    def encode(self, request: dict) -> tuple[bytes, str]:
        """The request's body and cache key, for a caller that looks the cache up itself (off the loop)."""
        return encode_request(request, self.identity)

    def prepared(self, request: dict, body: bytes, key: str, cached: dict | None) -> Prepared:
        """``prepare`` with the cache's answer (or None) looked up by the caller."""
        # A simulator's answer is served only to a simulator: a URL a hand-started simulator had may
        # be a real endpoint's now. Until this one has said what it is (its header), ask it again.
        if cached is not None and (not cached.get("simulated") or self.simulated
                                   or self.identity in _SAID_SIMULATOR):
            self.stats.cache_hits += 1
            return Prepared(body, key, Completion.from_cache(cached), request)
        return Prepared(body, key, None, request)

    async def send(self, prepared: Prepared, booked_tokens: int) -> Completion:
        """Send it, paced and retried; raises LLMError when it fails for good.

        ``booked_tokens`` is the request's worst case (prompt + max output) for the token pacing;
        what the usage shows was not used is given back.
        """
        if prepared.request is not None:
            return await self._send_capable(prepared.request, booked_tokens, prepared.body)
        return await self._send_body(prepared.body, booked_tokens)

    async def _send_body(self, body: bytes, booked_tokens: int) -> Completion:
        completion = await self._call(self._chat, body, booked_tokens, _completion)
        if completion.simulated:
            _SAID_SIMULATOR.add(self.identity)
        else:  # a real server has that URL now: no more simulator's answers for it
            _SAID_SIMULATOR.discard(self.identity)
        completion.simulated = completion.simulated or self.simulated
        self.limiter.refund(booked_tokens - completion.prompt_tokens - completion.completion_tokens, self._clock())
        return completion

    async def _send_capable(self, request: dict, booked_tokens: int, body: bytes | None = None) -> Completion:
        """The request in the form the endpoint takes; a capability it refuses is given up (and
        remembered) and the request sent again: a missing feature is not an outage."""
        samples = request.get("n", 1)
        while True:
            if samples > 1 and self.caps.n is False:
                completion = await self._send_apart(request, booked_tokens)
                if self.kept.n is not False:  # refused, and answered apart: kept from now on
                    self.kept.n = False
                    caps_.keep_learned(self.kept, self.caps, {caps_.N})
                return completion
            adapted = caps_.adapt(request, self.caps)
            used = self.caps
            try:
                # The body prepare serialised, while the endpoint takes the request as it is.
                sent = body if body is not None and adapted == request else encode_request(adapted, self.identity)[0]
                completion = await self._send_body(sent, booked_tokens)
            except CapabilityRefused as e:  # retry.decide's downgrade: carried out here
                if caps_.adapt(request, self.caps) != adapted:
                    continue  # another request in flight learned it meanwhile: send the new form
                weaker = Capabilities.from_json(self.caps.to_json())
                if not weaker.weaken(e.capability, str(e)):
                    raise
                self.caps = weaker  # a new object: ``used`` of requests in flight stays what they sent
                self.stats.capability_fallbacks += 1
                log.warning("the endpoint refused %s; sending requests without it from now on (kept for later "
                            "runs once one is answered; `prelabel probe` checks again): %s", e.capability, e)
                continue
            caps_.confirm(self.kept, used, request, adapted)
            self._learn(request, completion)
            if samples > 1 and len(completion.all_samples()) < samples:
                # ``n`` ignored: the other samples are asked apart, with distinct seeds.
                line = f"n: asked {samples} choices, got {len(completion.all_samples())}"
                for caps in (self.caps, self.kept):
                    caps.n = False
                    caps.learned.append(line)
                return await self._send_apart(request, booked_tokens, skip=1, first=completion)
            return completion

    async def _send_apart(self, request: dict, booked_tokens: int, skip: int = 0,
                          first: Completion | None = None) -> Completion:
        """``n`` samples as separate requests (distinct seeds), merged into one completion (with
        ``first``, the sample already answered). When one fails, the error carries the answers
        received (``LLMError.answered``): they were paid for."""
        requests = caps_.sample_requests(request, request["n"])[skip:]
        each = max(1, booked_tokens - request.get("max_tokens", 0) * (request["n"] - 1))
        answered = [first] if first is not None else []
        if self.slots is None:
            # A fixed max_concurrency counts items in flight, one request each: samples go one by
            # one, or an item would put n requests on a server that serves few at once.
            for r in requests:
                try:
                    answered.append(await self._send_capable(r, each))
                except (LLMError, LeaseLost) as e:
                    e.answered[:0] = answered
                    raise
            return _merged(answered)
        replies = await asyncio.gather(*(self._send_capable(r, each) for r in requests), return_exceptions=True)
        answered += [reply for reply in replies if isinstance(reply, Completion)]
        for reply in replies:
            if isinstance(reply, (LLMError, LeaseLost)):
                reply.answered[:0] = answered
            if isinstance(reply, BaseException):
                raise reply
        return _merged(answered)

    def _learn(self, request: dict, completion: Completion) -> None:
        """What an answer shows: in the capabilities in use and in those kept alike."""
        for caps in (self.caps, self.kept):
            caps.usage = completion.usage_reported
            if completion.cached_prompt_tokens:
                caps.prompt_cache = True
            if request.get("logprobs") and self.caps.logprobs:
                caps.logprobs_seen = completion.logprobs is not None
            if request.get("n", 1) > 1 and len(completion.all_samples()) >= request["n"]:
                caps.n = True

    def prompt_copies(self, samples: int) -> int:
        """How many times a request of ``samples`` choices sends its prompt (for the budget)."""
        return samples if samples > 1 and self.caps.n is False else 1

    def prepare_embeddings(self, texts: Sequence[str], model: str) -> PreparedEmbeddings:
        """Look each text up in the cache (per model and text), and count what would be sent.

        Counted with the embedding model's encoding: the caller reserves ``tokens_to_send`` from
        the budget before ``embed``, as it reserves a chat request's worst case before ``send``.
        """
        counter = TokenCounter(model)
        limit = self.settings.embed_max_input_tokens
        keys, vectors, sent, tokens = [], [], [], []
        for text in texts:
            key = encode_request({"model": model, "input": text}, self.identity)[1]
            stored = self._cache_get(key)
            keys.append(key)
            if stored is not None:
                vectors.append(_vector(stored["embedding"]))
                sent.append(text)
                tokens.append(0)
                continue
            ids = counter.encoding.encode_ordinary(text)
            vectors.append(None)
            sent.append(counter.encoding.decode(ids[:limit]) if len(ids) > limit else text)
            tokens.append(min(len(ids), limit))
        return PreparedEmbeddings(model, keys, vectors, sent, tokens)

    async def embed(self, prepared: PreparedEmbeddings) -> Embeddings:
        """Fetch the vectors the cache did not have, in batches, paced and retried like chat.

        Never raises for a failed request: the result carries the first failure (its texts and
        the rest get no vector) beside the tokens already billed, so the caller's budget stays
        exact. ``EmbeddingsUnavailable`` means the endpoint has none for this model.
        """
        positions: dict[str, list[int]] = {}  # a text asked twice is fetched once
        for position, vector in enumerate(prepared.vectors):
            if vector is None:
                positions.setdefault(prepared.keys[position], []).append(position)
        firsts = [same[0] for same in positions.values()]
        result = Embeddings(list(prepared.vectors), 0, [None] * len(prepared.vectors))
        settings = self.settings
        for batch in embedding_batches([prepared.tokens[p] for p in firsts], settings.embed_batch,
                                       settings.embed_batch_tokens):
            batch = [firsts[i] for i in batch]
            body = encode_request(embeddings_request(prepared.model, [prepared.texts[p] for p in batch]),
                                  self.identity)[0]
            booked = sum(prepared.tokens[p] for p in batch)
            try:
                vectors, billed = await self._call(self._embeddings, body, booked,
                                                   lambda raw, n=len(batch): parse_embeddings(raw.content, n))
            except LLMError as e:
                error = e
                if isinstance(e, MalformedAnswer):  # answered, so paid for: what it reported, else our count
                    result.prompt_tokens += e.usage[0] if e.usage else booked
                if e.status in NO_EMBEDDINGS_STATUS or isinstance(e, MalformedAnswer):
                    error = EmbeddingsUnavailable(f"no embeddings for model {prepared.model!r} at this endpoint: {e}",
                                                  status=e.status, attempts=e.attempts)
                    error.__cause__ = e.__cause__
                log.warning("embeddings failed: %s", error)
                result.error = error
                return result
            billed = booked if billed is None else billed  # no usage reported: charge our own count
            self.limiter.refund(booked - billed, self._clock())
            result.prompt_tokens += billed
            for first, vector in zip(batch, vectors):
                entry = (prepared.keys[first], {"embedding": _encoded(vector)})
                for position in positions[prepared.keys[first]]:
                    result.vectors[position] = vector
                    result.to_store[position] = entry
        return result

    async def _call(self, endpoint: _Endpoint, body: bytes, booked: int, parse: Callable[[Any], Any]) -> Any:
        """One request through the retry policy: the parsed answer, or LLMError once it gives up."""
        tries = _Tries()
        try:
            try:
                return await self._attempt(endpoint, body, booked, tries, parse)
            except _AttemptFailed as first:
                # Most requests succeed at once; tenacity takes over only when one did not.
                if not first.decision.retry:
                    raise
                return await self._retry(endpoint, body, booked, parse, first, tries)
        except _AttemptFailed as e:
            # The cause's text is the endpoint's error body, which may echo the key it was sent.
            if e.failure.status == MALFORMED:
                usage, text = answered_usage(e.answered or b"")
                raise MalformedAnswer(redact(f"request failed: {e.decision.reason}: {_reason(e.cause)}"),
                                      attempts=e.attempt, usage=usage, text=text) from e.cause
            if e.decision.downgrade is not None:
                raise CapabilityRefused(redact(f"request refused: {e.decision.reason}: {_reason(e.cause)}"),
                                        capability=e.decision.downgrade, status=e.failure.status,
                                        attempts=e.attempt) from e.cause
            error = RateLimitWaitExceeded if e.decision.rate_limit_wait_exceeded else LLMError
            raise error(redact(f"request failed: {e.decision.reason}: {_reason(e.cause)}"), status=e.failure.status,
                        attempts=e.attempt) from e.cause

    async def _retry(self, endpoint: _Endpoint, body: bytes, booked: int, parse: Callable[[bytes], Any],
                     first: _AttemptFailed, tries: _Tries) -> Any:
        retrying = AsyncRetrying(retry=retry_if_exception(lambda e: isinstance(e, _AttemptFailed) and e.decision.retry),
                                 wait=lambda state: state.outcome.exception().decision.delay,
                                 sleep=self._sleep, reraise=True)
        await self._sleep(first.decision.delay)
        async for attempt in retrying:
            with attempt:
                self.stats.retries += 1
                return await self._attempt(endpoint, body, booked, tries, parse)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _paced(self, booked: int) -> None:
        """Wait for a start the limiter books; a slot voided meanwhile (a pause, a lower pace) is
        booked again, so that those waiting start one by one, never all at once."""
        limiter = self.limiter
        slot = limiter.book(booked, self._clock())
        while True:
            delay = slot.start - self._clock()
            if delay > 0:
                await self._sleep(delay)
            if limiter.holds(slot):
                break
            slot = limiter.rebook(slot, self._clock())
        limiter.started(self._clock(), slot)

    async def _attempt(self, endpoint: _Endpoint, body: bytes, booked: int, tries: _Tries,
                       parse: Callable[[bytes], Any]) -> Any:
        slots = self.slots
        if slots is not None:
            await slots.acquire()
        try:
            if not self._refusing:  # once refused with nothing ever answered, the rest fail at once, unpaced
                await self._paced(booked)
            if (before_send := BEFORE_SEND.get()) is not None:
                await before_send()
            tries.sent += 1
            self.stats.requests += 1
            sent_at = self._clock()
            epoch = slots.limit.epoch if slots is not None else 0
            try:
                raw = await send_json(self.client, endpoint.template, body, endpoint.path)
                self._answered, self._refusing = True, False
            except self._status_error as e:
                self._answered, self._refusing = True, False
                headers = rate_headers(e.response.headers.raw)
                self._observe(headers)
                failure = Failure(e.status_code, headers, getattr(e, "code", None), str(e), _sent(e.status_code, body))
                if e.status_code == 429:
                    self.stats.rate_limited += 1
                    if failure.code != "insufficient_quota" and self.limiter.limited(sent_at, self._clock()):
                        log.info("429: pacing at %.0f requests a minute", self.limiter.pace(self._clock()))
                elif e.status_code >= 500:
                    self.stats.server_errors += 1
                    if e.status_code == 503 and slots is not None:
                        slots.limit.overloaded(epoch)  # a full queue: fewer in flight
                raise self._failed(failure, tries, e) from e
            except self._connection_errors as e:
                self.stats.timeouts += 1
                if slots is not None:  # a request that outwaited timeout_s queued behind too many
                    slots.limit.overloaded(epoch, TIMEOUT_CUT)
                raise self._failed(Failure(None, {}, refused_unanswered=not self._answered and _refused(e)),
                                   tries, e) from e
            if slots is not None:
                slots.limit.sample(self._clock() - sent_at, slots.in_flight, epoch)
        finally:
            if slots is not None:
                slots.release()
        headers = rate_headers(raw.headers.raw)
        self._observe(headers)
        try:
            return parse(raw)  # the response: its body, and its headers (a simulator says so)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            # A 200 with a body that is not the answer asked for (not retried: see ``retry.decide``).
            failure = Failure(MALFORMED, headers)
            raise _AttemptFailed(failure, self._decide(failure, tries), e, tries.sent, raw.content) from e

    def _observe(self, headers: dict[str, str]) -> None:
        limits = (self.limiter.rpm, self.limiter.tpm)
        self.limiter.observe(headers, self._clock())
        if (self.limiter.rpm, self.limiter.tpm) != limits:
            log.info("the server reports lower limits: pacing to %d requests and %d tokens a minute",
                     self.limiter.rpm, self.limiter.tpm)

    def _decide(self, failure: Failure, tries: _Tries) -> RetryDecision:
        now, waited = self._clock(), 0.0
        if failure.status == 429:  # the limit's answer, bounded by the time spent waiting on it
            tries.first_429 = now if tries.first_429 is None else tries.first_429
            waited = now - tries.first_429
        else:
            tries.failures += 1
        return decide(failure, tries.failures, max_retries=self.model.max_retries,
                      base=self.settings.retry_base_s, cap=self.settings.retry_max_s, rng=self._rng,
                      rate_limited_s=waited, max_rate_limit_wait_s=self.model.max_rate_limit_wait_s)

    def _failed(self, failure: Failure, tries: _Tries, cause: Exception) -> _AttemptFailed:
        now = self._clock()
        decision = self._decide(failure, tries)
        attempt = tries.sent
        if failure.refused_unanswered and not decision.retry:
            self._refusing = True
        if decision.retry:
            log.info("attempt %d failed (%s); retrying in %.2fs", attempt, decision.reason, decision.delay)
        elif decision.downgrade is not None:  # not a failure: the engine sends it again without that
            log.info("attempt %d: %s", attempt, decision.reason)
        elif failure.status == 429:  # no failed item: the run stops and the item goes back to the queue
            log.warning("request given up on the rate limit after %d attempt(s) (%s); the run stops and its "
                        "item goes back to the queue", attempt, decision.reason)
        else:
            log.warning("request failed for good after %d attempt(s): %s: %s", attempt, decision.reason,
                        redact(_reason(cause)))
        if decision.retry and failure.status == 429 and decision.server_wait:
            # Everyone waits, not just this request: the window is shared. (Without a retry-after,
            # the pace the 429 lowered is what spaces everyone.)
            self.limiter.pause(decision.server_wait, now)
        return _AttemptFailed(failure, decision, cause, attempt)
