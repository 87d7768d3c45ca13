"""The engine over HTTP, against respx: what it sends, how it retries, what it learns from headers.

The engine's sleep and clock are injected: a fake sleep records each delay and moves a fake clock,
so backoff and retry-after are asserted exactly and nothing sleeps for real.
"""
from __future__ import annotations

import json
import random
import socket

import httpx
import openai
import pytest
import respx
from httpx_aiohttp import AiohttpTransport

from prelabel.completion import Completion
from prelabel.config import Engine, ModelSpec
from prelabel.errors import LLMError
from prelabel.client import make_client
from prelabel.llm import LLMEngine, encode_request

BASE = "https://api.test/v1"
KEY = "sk-test"
T0 = 1000.0
MESSAGES = [{"role": "system", "content": "Classify."}, {"role": "user", "content": "I love it"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "Label", "strict": True,
                                                 "schema": {"type": "object", "properties": {}}}}
# Pacing so generous that the limiter never adds a wait of its own: the recorded sleeps are the retries'.
FAST = ModelSpec(name="gpt-4o-mini", rpm=10_000_000, tpm=1_000_000_000, max_retries=4)


class FakeTime:
    def __init__(self, start: float = T0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


class UpperBound(random.Random):
    """Full jitter pinned to its ceiling, so the backoff's growth and cap show exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


def chat_body(content: str | None = '{"label": "positive"}', *, logprobs: list | None = None,
              usage: dict | None = None, finish_reason: str = "stop") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content, "refusal": None},
                         "logprobs": {"content": logprobs} if logprobs is not None else None}],
            "usage": usage if usage is not None else {"prompt_tokens": 21, "completion_tokens": 6,
                                                      "total_tokens": 27}}


def ok(**kwargs) -> httpx.Response:
    return httpx.Response(200, json=chat_body(**kwargs))


def error(status: int, code: str | None = None, headers: dict | None = None) -> httpx.Response:
    body = {"error": {"message": f"status {status}", "type": code or "server_error", "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
async def client():
    # A plain httpx transport: respx's default (httpcore) mocker intercepts it.
    c = openai.AsyncOpenAI(api_key=KEY, base_url=BASE, max_retries=0, http_client=httpx.AsyncClient())
    yield c
    await c.close()


@pytest.fixture
def api():
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


def make_engine(client, fake: FakeTime, spec: ModelSpec = FAST, settings: Engine = Engine(), *,
                cache_get=lambda key: None, rng: random.Random | None = None) -> LLMEngine:
    return LLMEngine(client, spec, settings, cache_get=cache_get, sleep=fake.sleep, clock=fake.clock,
                     rng=rng or random.Random(0))


async def send(engine: LLMEngine, request: dict) -> tuple[Completion, str]:
    """What the worker does: look in the cache, else send (prompt 21 tokens + max_tokens booked)."""
    prepared = engine.prepare(request)
    if prepared.cached is not None:
        return prepared.cached, prepared.key
    return await engine.send(prepared, 21 + request["max_tokens"]), prepared.key


async def complete(engine: LLMEngine) -> Completion:
    completion, _ = await send(engine, engine.request(MESSAGES, SCHEMA, 32))
    return completion


# --- what goes on the wire -------------------------------------------------------------------------

async def test_sends_the_built_body_and_the_key(client, api, fake):
    route = api.post("/chat/completions").mock(return_value=ok())
    engine = make_engine(client, fake, ModelSpec(name="gpt-4o-mini", temperature=0.2, seed=7))
    request = engine.request(MESSAGES, SCHEMA, 32)
    await send(engine, request)

    sent = route.calls.last.request
    assert json.loads(sent.content) == request == {
        "model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.2, "max_tokens": 32,
        "response_format": SCHEMA, "logprobs": True, "seed": 7}
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"


async def test_optional_fields_are_left_out(client, api, fake):
    route = api.post("/chat/completions").mock(return_value=ok())
    engine = make_engine(client, fake, ModelSpec(name="m", logprobs=False))
    await send(engine, engine.request(MESSAGES, None, 8))
    assert set(json.loads(route.calls.last.request.content)) == {"model", "messages", "temperature", "max_tokens"}


async def test_the_sdk_itself_never_retries(client, api, fake):
    # One engine attempt is one HTTP request: with the engine's retries at 0, a 500 is sent once.
    route = api.post("/chat/completions").mock(return_value=error(500))
    engine = make_engine(client, fake, FAST.model_copy(update={"max_retries": 0}))
    with pytest.raises(LLMError) as caught:
        await complete(engine)
    assert route.call_count == 1
    assert caught.value.attempts == 1 and caught.value.status == 500
    assert fake.sleeps == []


# --- 429: the server's wait is a floor, and everyone waits -----------------------------------------

async def test_429_honours_retry_after_ms_and_pauses_the_limiter(client, api, fake):
    route = api.post("/chat/completions").mock(side_effect=[error(429, headers={"retry-after-ms": "1500"}), ok()])
    engine = make_engine(client, fake)
    completion = await complete(engine)

    assert completion.content == '{"label": "positive"}'
    assert route.call_count == 2
    assert engine.stats.rate_limited == 1 and engine.stats.retries == 1 and engine.stats.requests == 2
    assert len(fake.sleeps) == 1 and 1.5 <= fake.sleeps[0] <= 1.5 + 0.25
    # The pause is the limiter's, so every request sharing it waits, not only the one that got the 429.
    assert engine.limiter.paused_until >= T0 + 1.5
    assert engine.limiter.reserve(1, T0) >= 1.5


async def test_429_honours_retry_after_seconds(client, api, fake):
    api.post("/chat/completions").mock(side_effect=[error(429, headers={"retry-after": "2"}), ok()])
    engine = make_engine(client, fake)
    await complete(engine)
    assert len(fake.sleeps) == 1 and fake.sleeps[0] >= 2.0
    assert engine.limiter.paused_until >= T0 + 2.0


async def test_429_for_quota_is_not_retried(client, api, fake):
    route = api.post("/chat/completions").mock(return_value=error(429, "insufficient_quota",
                                                                  headers={"retry-after": "1"}))
    engine = make_engine(client, fake)
    with pytest.raises(LLMError, match="quota") as caught:
        await complete(engine)
    assert route.call_count == 1 and caught.value.status == 429 and caught.value.attempts == 1
    assert fake.sleeps == [] and engine.limiter.paused_until == 0.0


# --- 5xx and timeouts: jittered exponential backoff, capped ----------------------------------------

async def test_5xx_backoff_doubles_from_base(client, api, fake):
    route = api.post("/chat/completions").mock(side_effect=[error(500), error(502), error(503), ok()])
    engine = make_engine(client, fake, rng=UpperBound())
    await complete(engine)
    base = Engine().retry_base_s
    assert fake.sleeps == [base, 2 * base, 4 * base]
    assert route.call_count == 4
    assert engine.stats.server_errors == 3 and engine.stats.retries == 3


async def test_5xx_backoff_is_capped_and_jittered(client, api, fake):
    settings = Engine(retry_base_s=10.0, retry_max_s=15.0)
    api.post("/chat/completions").mock(side_effect=[error(500), error(502), error(503), ok()])
    engine = make_engine(client, fake, settings=settings, rng=UpperBound())
    await complete(engine)
    assert fake.sleeps == [10.0, 15.0, 15.0]

    jittered = FakeTime()
    api.post("/chat/completions").mock(side_effect=[error(500), error(502), error(503), ok()])
    engine = make_engine(client, jittered, settings=settings, rng=random.Random(0))
    await complete(engine)
    assert len(jittered.sleeps) == 3
    assert all(0 <= d <= min(settings.retry_max_s, 10.0 * 2 ** i) for i, d in enumerate(jittered.sleeps))
    assert jittered.sleeps != [10.0, 15.0, 15.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retried(client, api, fake, status):
    route = api.post("/chat/completions").mock(return_value=error(status))
    engine = make_engine(client, fake)
    with pytest.raises(LLMError) as caught:
        await complete(engine)
    assert route.call_count == 1
    assert caught.value.status == status and caught.value.attempts == 1
    assert isinstance(caught.value.__cause__, openai.APIStatusError)
    assert fake.sleeps == [] and engine.stats.retries == 0


async def test_gives_up_after_max_retries_with_the_cause_chained(client, api, fake):
    spec = FAST.model_copy(update={"max_retries": 3})
    route = api.post("/chat/completions").mock(return_value=error(503))
    engine = make_engine(client, fake, spec)
    with pytest.raises(LLMError) as caught:
        await complete(engine)
    assert route.call_count == spec.max_retries + 1
    assert caught.value.attempts == spec.max_retries + 1 and caught.value.status == 503
    assert isinstance(caught.value.__cause__, openai.InternalServerError)
    assert caught.value.__cause__.status_code == 503
    assert len(fake.sleeps) == spec.max_retries and engine.stats.retries == spec.max_retries


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ConnectError])
async def test_timeouts_and_dropped_connections_are_retried(client, api, fake, exc):
    route = api.post("/chat/completions").mock(side_effect=[exc("boom"), exc("boom"), ok()])
    engine = make_engine(client, fake)
    completion = await complete(engine)
    assert completion.content is not None
    assert route.call_count == 3
    assert engine.stats.timeouts == 2 and engine.stats.retries == 2 and len(fake.sleeps) == 2


async def test_timeouts_exhausted_carry_no_status(client, api, fake):
    api.post("/chat/completions").mock(side_effect=httpx.ReadTimeout("slow"))
    engine = make_engine(client, fake, FAST.model_copy(update={"max_retries": 1}))
    with pytest.raises(LLMError) as caught:
        await complete(engine)
    assert caught.value.status is None and caught.value.attempts == 2
    assert isinstance(caught.value.__cause__, openai.APITimeoutError)


# --- a 200 that is not a chat completion is a broken proxy: transient --------------------------------

@pytest.mark.parametrize("content", [b"<html>502 Bad Gateway</html>", b"", b'{"object": "error"}',
                                     b'{"choices": []}', b"[1, 2]"])
async def test_a_200_that_is_not_a_completion_is_retried(client, api, fake, content):
    route = api.post("/chat/completions").mock(side_effect=[httpx.Response(200, content=content), ok()])
    engine = make_engine(client, fake)
    completion = await complete(engine)
    assert completion.content == '{"label": "positive"}'
    assert route.call_count == 2 and engine.stats.retries == 1


@pytest.mark.parametrize("body", [{"choices": [None]}, {"choices": [{"message": "hi"}]}, {"choices": ["x"]}])
async def test_a_200_with_malformed_choices_is_retried(client, api, fake, body):
    api.post("/chat/completions").mock(side_effect=[httpx.Response(200, json=body), ok()])
    engine = make_engine(client, fake)
    await complete(engine)
    assert engine.stats.retries == 1


async def test_a_200_that_is_never_a_completion_fails_as_a_bad_gateway(client, api, fake):
    api.post("/chat/completions").mock(return_value=httpx.Response(200, text="<html>login</html>"))
    engine = make_engine(client, fake, FAST.model_copy(update={"max_retries": 1}))
    with pytest.raises(LLMError) as caught:
        await complete(engine)
    assert caught.value.status == 502 and caught.value.attempts == 2
    assert isinstance(caught.value.__cause__, ValueError)


# --- rate-limit headers ------------------------------------------------------------------------------

async def test_adopts_a_lower_server_limit_and_keeps_the_configured_ceiling(client, api, fake):
    spec = ModelSpec(name="m", rpm=500, tpm=200_000)
    route = api.post("/chat/completions")
    engine = make_engine(client, fake, spec)

    route.mock(return_value=httpx.Response(200, json=chat_body(), headers={
        "x-ratelimit-limit-requests": "120", "x-ratelimit-limit-tokens": "40000",
        "x-ratelimit-remaining-requests": "119", "x-ratelimit-reset-requests": "500ms"}))
    await complete(engine)
    assert (engine.limiter.rpm, engine.limiter.tpm) == (120, 40_000)
    assert engine.limiter.paused_until == 0.0  # requests remain: no pause

    route.mock(return_value=httpx.Response(200, json=chat_body(), headers={
        "x-ratelimit-limit-requests": "10000", "x-ratelimit-limit-tokens": "10000000"}))
    await complete(engine)
    # A server allowing more than the job file says does not raise the job's own limit.
    assert (engine.limiter.rpm, engine.limiter.tpm) == (500, 200_000)


async def test_remaining_zero_pauses_until_the_reset(client, api, fake):
    api.post("/chat/completions").mock(return_value=httpx.Response(200, json=chat_body(), headers={
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "250ms",
        "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "6m0s"}))
    engine = make_engine(client, fake)
    await complete(engine)
    answered_at = fake.now
    assert engine.limiter.paused_until == pytest.approx(answered_at + 0.25)

    # The next request waits out the window before it is sent.
    await complete(engine)
    assert fake.sleeps and sum(fake.sleeps) >= 0.25 - 1e-9


# --- the response, read -----------------------------------------------------------------------------

async def test_reads_logprobs_usage_and_finish_reason(client, api, fake):
    lp = [{"token": '{"', "logprob": -0.01, "bytes": [123, 34], "top_logprobs": []},
          {"token": "positive", "logprob": -0.25, "bytes": None, "top_logprobs": []}]
    api.post("/chat/completions").mock(return_value=ok(logprobs=lp, finish_reason="length", usage={
        "prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}))
    completion = await complete(make_engine(client, fake))
    assert completion.logprobs == [('{"', -0.01), ("positive", -0.25)]
    assert (completion.prompt_tokens, completion.completion_tokens) == (40, 2)
    assert completion.finish_reason == "length"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.cached is False


@pytest.mark.parametrize("choice_logprobs", [None, {"content": None}, {"content": []}])
async def test_no_logprobs_is_none(client, api, fake, choice_logprobs):
    body = chat_body()
    body["choices"][0]["logprobs"] = choice_logprobs
    api.post("/chat/completions").mock(return_value=httpx.Response(200, json=body))
    completion = await complete(make_engine(client, fake))
    assert completion.logprobs is None


async def test_missing_usage_reads_as_zero(client, api, fake):
    body = chat_body()
    del body["usage"]
    api.post("/chat/completions").mock(return_value=httpx.Response(200, json=body))
    completion = await complete(make_engine(client, fake))
    assert (completion.prompt_tokens, completion.completion_tokens) == (0, 0)


# --- the cache ---------------------------------------------------------------------------------------

async def test_a_cache_hit_makes_no_request(client, fake):
    stored = Completion('{"label": "negative"}', None, "stop", [("negative", -0.1)], 30, 4, "gpt-4o-mini").to_cache()
    asked: list[str] = []

    def cache_get(key: str) -> dict | None:
        asked.append(key)
        return stored

    # assert_all_mocked: any request at all would fail the test.
    with respx.mock(base_url=BASE, assert_all_mocked=True) as mock:
        engine = make_engine(client, fake, cache_get=cache_get)
        request = engine.request(MESSAGES, SCHEMA, 32)
        completion, key = await send(engine, request)
        assert mock.calls.call_count == 0

    assert key == encode_request(request)[1] and asked == [key]
    assert completion.cached is True and completion.content == '{"label": "negative"}'
    assert completion.logprobs == [("negative", -0.1)]
    assert engine.stats.cache_hits == 1 and engine.stats.requests == 0


async def test_a_cache_miss_is_looked_up_by_the_request_key(client, api, fake):
    api.post("/chat/completions").mock(return_value=ok())
    asked: list[str] = []
    engine = make_engine(client, fake, cache_get=lambda key: asked.append(key))
    request = engine.request(MESSAGES, SCHEMA, 32)
    completion, key = await send(engine, request)
    assert asked == [key] == [encode_request(request)[1]]
    assert completion.cached is False and engine.stats.cache_hits == 0


# --- the production client -------------------------------------------------------------------------

async def test_make_client_uses_the_aiohttp_transport_and_respx_httpx_mocker_intercepts_it(fake):
    spec = ModelSpec(name="gpt-4o-mini", timeout_s=12.0, rpm=10_000_000, tpm=1_000_000_000, max_retries=0)
    client = make_client(spec, api_key=KEY, base_url=BASE)
    try:
        # The SDK keeps its http client private; the class is the contract worth pinning here.
        assert isinstance(client._client, openai.DefaultAioHttpClient)
        assert isinstance(client._client._transport, AiohttpTransport)
        assert client.max_retries == 0 and client.timeout == 12.0

        # respx's default mocker patches httpcore, which the aiohttp transport never calls; the "httpx"
        # mocker patches AsyncClient._transport_for_url, which every AsyncClient subclass goes through.
        with respx.mock(base_url=BASE, using="httpx") as mock:
            route = mock.post("/chat/completions").mock(side_effect=[error(500), ok()])
            engine = make_engine(client, fake, spec)
            with pytest.raises(LLMError):
                await complete(engine)
            assert route.call_count == 1  # SDK retries off on the real client too
            engine = make_engine(client, fake, spec.model_copy(update={"max_retries": 1}))
            completion = await complete(engine)
        assert completion.content == '{"label": "positive"}'
        sent = route.calls.last.request
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        assert json.loads(sent.content)["logprobs"] is True
    finally:
        await client.close()


async def test_respx_default_mocker_does_not_see_the_aiohttp_transport():
    # Why the test above says using="httpx": with the default mocker the request goes past respx to
    # the network. A closed loopback port keeps that local.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(ModelSpec(name="m", timeout_s=5.0), api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1")
    try:
        with respx.mock(base_url=f"http://127.0.0.1:{port}/v1", assert_all_called=False) as mock:
            route = mock.post("/chat/completions").mock(return_value=ok())
            with pytest.raises(openai.APIConnectionError):
                await client.post("/chat/completions", body={}, cast_to=httpx.Response)
            assert route.call_count == 0
    finally:
        await client.close()


async def test_a_response_without_usage_says_so(client, api, fake):
    body = chat_body()
    body.pop("usage")
    api.post("/chat/completions").mock(return_value=httpx.Response(200, json=body))
    completion = await complete(make_engine(client, fake))
    assert completion.usage_reported is False and completion.prompt_tokens == 0
