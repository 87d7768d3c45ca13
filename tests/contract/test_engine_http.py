"""The engine over HTTP, against respx: what it sends, how it retries, what it learns from headers.

The engine's sleep and clock are injected: a fake sleep records each delay and moves a fake clock,
so backoff and retry-after are asserted exactly and nothing sleeps for real.
"""
from __future__ import annotations

import base64
import json
import random
import socket
from array import array

import httpx
import openai
import pytest
import respx
from httpx_aiohttp import AiohttpTransport

from prelabel.llm.completion import Completion
from prelabel.config import Engine, ModelSpec
from prelabel.errors import EmbeddingsUnavailable, LLMError, MalformedAnswer
from prelabel.llm.client import make_client
from prelabel.llm.engine import LLMEngine, embedding_batches, encode_request

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
        "response_format": SCHEMA, "logprobs": True, "top_logprobs": 5, "seed": 7}
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


# --- a 200 that is not a chat completion: a failure of that answer, not a transient ------------------
# The same request gets the same body (llama-cpp-python's per-token embeddings were retried 7 times
# as if they were 502s); the worker re-asks it as an invalid answer, within task.max_reasks.

@pytest.mark.parametrize("content", [b"<html>502 Bad Gateway</html>", b"", b'{"object": "error"}',
                                     b'{"choices": []}', b"[1, 2]"])
async def test_a_200_that_is_not_a_completion_is_not_retried(client, api, fake, content):
    route = api.post("/chat/completions").mock(side_effect=[httpx.Response(200, content=content), ok()])
    engine = make_engine(client, fake)
    with pytest.raises(MalformedAnswer) as caught:
        await complete(engine)
    assert route.call_count == 1 and engine.stats.retries == 0
    assert caught.value.status is None and caught.value.attempts == 1
    assert isinstance(caught.value.__cause__, (ValueError, KeyError, IndexError, TypeError))


@pytest.mark.parametrize("body", [{"choices": [None]}, {"choices": [{"message": "hi"}]}, {"choices": ["x"]}])
async def test_a_200_with_malformed_choices_is_not_retried(client, api, fake, body):
    api.post("/chat/completions").mock(side_effect=[httpx.Response(200, json=body), ok()])
    engine = make_engine(client, fake)
    with pytest.raises(MalformedAnswer):
        await complete(engine)
    assert engine.stats.retries == 0


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
          {"token": "positive", "logprob": -0.25, "bytes": None,
           "top_logprobs": [{"token": "positive", "logprob": -0.25}, {"token": "negative", "logprob": -1.6}]}]
    api.post("/chat/completions").mock(return_value=ok(logprobs=lp, finish_reason="length", usage={
        "prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}))
    completion = await complete(make_engine(client, fake))
    assert completion.logprobs == [('{"', -0.01, []), ("positive", -0.25, [("positive", -0.25), ("negative", -1.6)])]
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

    assert key == encode_request(request, BASE)[1] and asked == [key]
    assert completion.cached is True and completion.content == '{"label": "negative"}'
    assert completion.logprobs == [("negative", -0.1)]
    assert engine.stats.cache_hits == 1 and engine.stats.requests == 0


async def test_a_cache_miss_is_looked_up_by_the_request_key(client, api, fake):
    api.post("/chat/completions").mock(return_value=ok())
    asked: list[str] = []
    engine = make_engine(client, fake, cache_get=lambda key: asked.append(key))
    request = engine.request(MESSAGES, SCHEMA, 32)
    completion, key = await send(engine, request)
    assert asked == [key] == [encode_request(request, BASE)[1]]
    assert completion.cached is False and engine.stats.cache_hits == 0


async def test_the_cache_key_names_what_answers_as_well_as_the_request(client, fake):
    # The engine's identity is the client's base URL unless told: the simulator is told "simulator".
    by_url, simulator = make_engine(client, fake), LLMEngine(client, FAST, Engine(), lambda key: None,
                                                            identity="simulator", simulated=True)
    other_model = LLMEngine(client, FAST.model_copy(update={"name": "gpt-4o"}), Engine(), lambda key: None)
    request = by_url.request(MESSAGES, SCHEMA, 32)
    assert by_url.identity == BASE and simulator.identity == "simulator"
    keys = {by_url.prepare(request).key, simulator.prepare(simulator.request(MESSAGES, SCHEMA, 32)).key,
            other_model.prepare(other_model.request(MESSAGES, SCHEMA, 32)).key}
    assert len(keys) == 3
    assert by_url.prepare(request).key == by_url.prepare(dict(reversed(request.items()))).key  # canonical JSON
    embed_keys = {e.prepare_embeddings(["x"], EMBED_MODEL).keys[0] for e in (by_url, simulator)}
    assert len(embed_keys) == 2


async def test_an_answer_from_an_identifying_simulator_is_marked_simulated(client, api, fake):
    route = api.post("/chat/completions")
    route.mock(return_value=httpx.Response(200, json=chat_body(), headers={"x-prelabel-simulator": "1"}))
    engine = make_engine(client, fake)
    completion, _ = await send(engine, engine.request(MESSAGES, SCHEMA, 32))
    assert completion.simulated is True and completion.to_cache()["simulated"] is True
    assert Completion.from_cache(completion.to_cache()).simulated is True

    route.mock(return_value=ok())  # a real endpoint: not marked, unless the engine is the simulator's
    completion, _ = await send(engine, engine.request(MESSAGES, SCHEMA, 16))
    assert completion.simulated is False
    simulator = LLMEngine(client, FAST, Engine(), lambda key: None, identity="simulator", simulated=True)
    completion, _ = await send(simulator, simulator.request(MESSAGES, SCHEMA, 32))
    assert completion.simulated is True


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


@pytest.fixture
async def loopback():
    """A real HTTP server on a loopback port, answering each POST with the next of ``answers`` (the
    last one again and again; each makes a response, or is a handler): what the SDK's aiohttp
    transport reads off a real socket."""
    import asyncio

    from aiohttp import web

    runners = []

    async def start(*answers) -> tuple[list, str]:
        queue, received = list(answers), []

        async def handle(request):
            received.append(await request.read())
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
            return await answer(request) if asyncio.iscoroutinefunction(answer) else answer()

        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return received, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_the_production_client_reads_plain_gzip_and_error_bodies_off_a_real_socket(loopback, fake):
    import gzip

    from aiohttp import web

    def plain():
        return web.Response(body=json.dumps(chat_body()).encode(), content_type="application/json")

    def squeezed():
        return web.Response(body=gzip.compress(json.dumps(chat_body('{"label": "negative"}')).encode()),
                            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    def limited():
        return web.Response(status=429, body=json.dumps({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}),
                            headers={"Content-Type": "application/json", "retry-after-ms": "1500"})

    received, url = await loopback(plain, squeezed, limited, plain)
    spec = FAST.model_copy(update={"max_retries": 2, "timeout_s": 3.0})
    client = make_client(spec, api_key=KEY, base_url=url)
    try:
        engine = make_engine(client, fake, spec)
        first, second, third = [await complete(engine) for _ in range(3)]
        raw = await client.post("/chat/completions", body={}, cast_to=httpx.Response)
    finally:
        await client.close()
    assert first.content == '{"label": "positive"}' and first.prompt_tokens == 21
    assert second.content == '{"label": "negative"}'  # decoded by httpx, as the SDK reads it
    assert third.content == '{"label": "positive"}' and engine.stats.rate_limited == 1  # the 429's body and headers read
    assert max(fake.sleeps) >= 1.5  # the server's retry-after-ms
    assert raw.is_closed and raw.json() == chat_body()  # read whole, its connection back in the pool
    assert len(received) == 5


async def test_the_production_client_reads_an_error_body_off_a_real_socket(loopback, fake):
    from aiohttp import web

    def refused():
        return web.Response(status=400, content_type="application/json",
                            body=json.dumps({"error": {"message": "no such field", "code": "invalid_field"}}))

    _, url = await loopback(refused)
    client = make_client(FAST, api_key=KEY, base_url=url)
    try:
        with pytest.raises(LLMError) as caught:
            await complete(make_engine(client, fake))
    finally:
        await client.close()
    cause = caught.value.__cause__
    assert isinstance(cause, openai.BadRequestError) and cause.code == "invalid_field"
    assert "no such field" in str(cause) and "no such field" in str(caught.value)


@pytest.mark.parametrize("answered_before", [False, True])
async def test_a_closed_port_is_a_connection_error_retried_once_the_endpoint_has_answered(answered_before):
    # A closed loopback port: the connection is refused, nothing leaves the machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client(ModelSpec(name="m", timeout_s=5.0), api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1")
    fake = FakeTime()
    try:
        engine = make_engine(client, fake, FAST.model_copy(update={"max_retries": 1}))
        # Refused by an endpoint that answered before: a restart, retried. Refused with nothing ever
        # answered: a wrong URL or a server not started, given up at once (exit 6 in seconds).
        engine._answered = answered_before
        with pytest.raises(LLMError) as caught:
            await complete(engine)
    finally:
        await client.close()
    attempts = 2 if answered_before else 1
    assert caught.value.status is None and caught.value.attempts == attempts and engine.stats.timeouts == attempts
    assert isinstance(caught.value.__cause__, openai.APIConnectionError)
    assert ("has not answered once" in str(caught.value)) is not answered_before


async def test_the_production_client_times_out_a_silent_server(loopback, fake):
    import asyncio

    release = asyncio.Event()

    async def silent(request):
        await release.wait()  # until the test is over: the client gives up first

    _, url = await loopback(silent)
    client = make_client(ModelSpec(name="m", timeout_s=0.2), api_key=KEY, base_url=url)
    try:
        engine = make_engine(client, fake, FAST.model_copy(update={"max_retries": 0}))
        with pytest.raises(LLMError) as caught:
            await complete(engine)
    finally:
        await client.close()
        release.set()
    assert isinstance(caught.value.__cause__, openai.APITimeoutError) and engine.stats.timeouts == 1


async def test_a_response_without_usage_says_so(client, api, fake):
    body = chat_body()
    body.pop("usage")
    api.post("/chat/completions").mock(return_value=httpx.Response(200, json=body))
    completion = await complete(make_engine(client, fake))
    assert completion.usage_reported is False and completion.prompt_tokens == 0


# --- embeddings -------------------------------------------------------------------------------------

EMBED_MODEL = "text-embedding-3-small"


def embeddings_body(vectors: list[list[float]], *, tokens: int | None = None, as_base64: bool = True) -> dict:
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(array("f", v).tobytes()).decode() if as_base64 else v}
            for i, v in enumerate(vectors)]
    body = {"object": "list", "data": data, "model": EMBED_MODEL}
    if tokens is not None:
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return body


def echo_embeddings(request: httpx.Request) -> httpx.Response:
    """A vector per input that says which input it was: [its length, 1]; 3 tokens per input billed."""
    inputs = json.loads(request.content)["input"]
    return httpx.Response(200, json=embeddings_body([[float(len(t)), 1.0] for t in inputs], tokens=3 * len(inputs)))


def inputs_sent(route) -> list[list[str]]:
    return [json.loads(call.request.content)["input"] for call in route.calls]


async def test_embeddings_request_shape_vectors_usage_and_cache_entries(client, api, fake):
    route = api.post("/embeddings").mock(side_effect=echo_embeddings)
    engine = make_engine(client, fake)
    prepared = engine.prepare_embeddings(["I love it", "broken"], EMBED_MODEL)
    assert prepared.tokens_to_send == 4 and prepared.vectors == [None, None]
    result = await engine.embed(prepared)

    assert json.loads(route.calls.last.request.content) == {
        "model": EMBED_MODEL, "input": ["I love it", "broken"], "encoding_format": "base64"}
    assert result.error is None and result.prompt_tokens == 6
    assert [list(v) for v in result.vectors] == [[9.0, 1.0], [6.0, 1.0]]
    assert [key for key, _ in result.to_store] == prepared.keys
    assert array("f", base64.b64decode(result.to_store[0][1]["embedding"])) == result.vectors[0]


async def test_embeddings_are_batched_and_a_repeated_text_is_fetched_once(client, api, fake):
    route = api.post("/embeddings").mock(side_effect=echo_embeddings)
    engine = make_engine(client, fake, settings=Engine(embed_batch=2))
    texts = ["a", "bb", "a", "ccc", "dddd"]
    result = await engine.embed(engine.prepare_embeddings(texts, EMBED_MODEL))
    assert inputs_sent(route) == [["a", "bb"], ["ccc", "dddd"]]
    assert [v[0] for v in result.vectors] == [1.0, 2.0, 1.0, 3.0, 4.0]
    assert result.to_store[0] == result.to_store[2] and result.prompt_tokens == 12


def test_embedding_batches_close_at_the_text_or_token_limit():
    assert embedding_batches([5, 5, 5, 20, 1], max_texts=3, max_tokens=10) == [[0, 1], [2], [3], [4]]
    assert embedding_batches([1] * 5, max_texts=2, max_tokens=100) == [[0, 1], [2, 3], [4]]
    assert embedding_batches([], max_texts=2, max_tokens=100) == []


async def test_cached_embeddings_are_not_sent(client, api, fake):
    route = api.post("/embeddings").mock(side_effect=echo_embeddings)
    stored = {"embedding": base64.b64encode(array("f", [0.5, 0.25]).tobytes()).decode()}
    hit = encode_request({"model": EMBED_MODEL, "input": "seen"}, BASE)[1]
    engine = make_engine(client, fake, cache_get=lambda key: stored if key == hit else None)
    prepared = engine.prepare_embeddings(["seen", "new"], EMBED_MODEL)
    assert prepared.tokens == [0, 1]
    result = await engine.embed(prepared)
    assert inputs_sent(route) == [["new"]]
    assert list(result.vectors[0]) == [0.5, 0.25] and result.to_store[0] is None and result.to_store[1] is not None

    everything_cached = make_engine(client, fake, cache_get=lambda key: stored)
    result = await everything_cached.embed(everything_cached.prepare_embeddings(["x", "y"], EMBED_MODEL))
    assert route.call_count == 1 and result.prompt_tokens == 0 and result.error is None


@pytest.mark.parametrize("status", [404, 405, 501])
async def test_an_endpoint_without_embeddings_says_so_at_once(client, api, fake, status):
    route = api.post("/embeddings").mock(return_value=error(status, "model_not_found"))
    engine = make_engine(client, fake)
    result = await engine.embed(engine.prepare_embeddings(["a", "b"], EMBED_MODEL))
    assert isinstance(result.error, EmbeddingsUnavailable) and result.error.status == status
    assert isinstance(result.error.__cause__, openai.APIStatusError)
    assert route.call_count == 1 and fake.sleeps == [] and result.vectors == [None, None]
    assert result.prompt_tokens == 0


async def test_embeddings_429_is_retried_by_the_same_policy(client, api, fake):
    route = api.post("/embeddings").mock(side_effect=[
        error(429, "rate_limit_exceeded", {"retry-after-ms": "1500"}), echo_embeddings])
    engine = make_engine(client, fake)
    result = await engine.embed(engine.prepare_embeddings(["a"], EMBED_MODEL))
    assert result.error is None and list(result.vectors[0]) == [1.0, 1.0]
    assert route.call_count == 2 and engine.stats.rate_limited == 1 and engine.stats.retries == 1
    assert len(fake.sleeps) == 1 and 1.5 <= fake.sleeps[0] <= 1.5 * 1.1 + 1e-9


async def test_a_failed_batch_keeps_what_came_before_and_its_usage(client, api, fake):
    api.post("/embeddings").mock(side_effect=[echo_embeddings] + [error(500)] * 3)
    engine = make_engine(client, fake, FAST.model_copy(update={"max_retries": 2}), Engine(embed_batch=2))
    result = await engine.embed(engine.prepare_embeddings(["a", "b", "c", "d", "e"], EMBED_MODEL))
    assert type(result.error) is LLMError and result.error.status == 500 and result.error.attempts == 3
    assert [v is not None for v in result.vectors] == [True, True, False, False, False]
    assert result.prompt_tokens == 6 and result.to_store[2:] == [None, None, None]


async def test_a_list_of_floats_and_no_usage_are_accepted(client, api, fake):
    api.post("/embeddings").mock(return_value=httpx.Response(200, json=embeddings_body([[0.1, 0.2]], as_base64=False)))
    engine = make_engine(client, fake)
    prepared = engine.prepare_embeddings(["two words"], EMBED_MODEL)
    result = await engine.embed(prepared)
    assert list(result.vectors[0]) == pytest.approx([0.1, 0.2])
    assert result.prompt_tokens == prepared.tokens_to_send == 2  # our own count is charged


@pytest.mark.parametrize("body", [embeddings_body([[1.0], [2.0]]), embeddings_body([]), {"data": [{"index": 0}]},
                                  {"data": [{"index": 0, "embedding": "not base64!"}]}, {"object": "list"}])
async def test_a_200_that_is_not_the_embeddings_asked_for_means_no_embeddings(client, api, fake, body):
    # Not retried: the same request gets the same body; similar examples go lexical instead.
    route = api.post("/embeddings").mock(side_effect=[httpx.Response(200, json=body), echo_embeddings])
    engine = make_engine(client, fake)
    result = await engine.embed(engine.prepare_embeddings(["a"], EMBED_MODEL))
    assert isinstance(result.error, EmbeddingsUnavailable)
    assert route.call_count == 1 and engine.stats.retries == 0


async def test_per_token_embedding_lists_are_no_embeddings(client, api, fake):
    # llama-cpp-python without pooling: one vector per token, in a list of lists.
    route = api.post("/embeddings").mock(return_value=httpx.Response(200, json={
        "object": "list", "data": [{"index": 0, "embedding": [[0.1, 0.2], [0.3, 0.4]]}]}))
    engine = make_engine(client, fake)
    result = await engine.embed(engine.prepare_embeddings(["a"], EMBED_MODEL))
    assert isinstance(result.error, EmbeddingsUnavailable) and route.call_count == 1


async def test_a_long_text_is_cut_to_the_models_input_limit(client, api, fake):
    route = api.post("/embeddings").mock(side_effect=echo_embeddings)
    engine = make_engine(client, fake, settings=Engine(embed_max_input_tokens=4))
    prepared = engine.prepare_embeddings(["one two three four five six seven"], EMBED_MODEL)
    assert prepared.tokens == [4]
    await engine.embed(prepared)
    assert inputs_sent(route) == [["one two three four"]]


async def test_the_production_client_posts_embeddings_to_the_embeddings_path(fake):
    spec = ModelSpec(name="gpt-4o-mini", rpm=10_000_000, tpm=1_000_000_000)
    client = make_client(spec, api_key=KEY, base_url=BASE)
    try:
        with respx.mock(base_url=BASE, using="httpx") as mock:
            route = mock.post("/embeddings").mock(side_effect=echo_embeddings)
            engine = make_engine(client, fake, spec)
            result = await engine.embed(engine.prepare_embeddings(["hello"], EMBED_MODEL))
        assert result.error is None and list(result.vectors[0]) == [5.0, 1.0]
        assert route.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    finally:
        await client.close()
