"""The engine under rate limits, against respx on a fake clock: 429s are bounded by time, not attempts."""
from __future__ import annotations

import random

import httpx
import openai
import pytest
import respx

from prelabel.config import Engine, ModelSpec
from prelabel.errors import LLMError, RateLimitWaitExceeded
from prelabel.llm.engine import LLMEngine

BASE = "https://api.test/v1"
MESSAGES = [{"role": "user", "content": "I love it"}]
BODY = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": "ok", "refusal": None}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


class FakeTime:
    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


@pytest.fixture
async def client():
    c = openai.AsyncOpenAI(api_key="sk-test", base_url=BASE, max_retries=0, http_client=httpx.AsyncClient())
    yield c
    await c.close()


@pytest.fixture
def api():
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


def engine_for(client, fake: FakeTime, **model) -> LLMEngine:
    spec = ModelSpec(name="m", rpm=6000, tpm=10**9, **{"max_retries": 2, **model})
    return LLMEngine(client, spec, Engine(), cache_get=lambda key: None, sleep=fake.sleep, clock=fake.clock,
                     rng=random.Random(0))


async def complete(engine: LLMEngine):
    prepared = engine.prepare(engine.request(MESSAGES, None, 8))
    return await engine.send(prepared, 20)


def too_many(headers: dict | None = None) -> httpx.Response:
    return httpx.Response(429, json={"error": {"message": "slow down", "type": "requests", "param": None,
                                               "code": "rate_limit_exceeded"}}, headers=headers)


async def test_429s_past_max_retries_do_not_fail_the_request(client, api):
    fake = FakeTime()
    route = api.post("/chat/completions").mock(side_effect=[too_many()] * 10 + [httpx.Response(200, json=BODY)])
    engine = engine_for(client, fake)  # max_retries 2: ten 429s would have failed it
    assert (await complete(engine)).content == "ok"
    assert route.call_count == 11 and engine.stats.rate_limited == 10
    assert engine.limiter.cuts >= 1 and engine.limiter.pace(fake.now) < 6000  # the 429s lowered the pace
    # No retry-after: the limiter's own wait, at most a second each time (the window it supposes)
    assert max(fake.sleeps) <= 1.1


async def test_5xx_stay_bounded_by_attempts_among_429s(client, api):
    fake = FakeTime()
    error = httpx.Response(503, json={"error": {"message": "x", "type": "server_error", "param": None, "code": None}})
    api.post("/chat/completions").mock(side_effect=[too_many(), error, too_many(), error, error])
    with pytest.raises(LLMError) as caught:
        await complete(engine_for(client, fake))
    assert caught.value.status == 503 and caught.value.attempts == 5
    assert not isinstance(caught.value, RateLimitWaitExceeded)


async def test_waiting_on_the_limit_is_bounded_by_time(client, api):
    fake = FakeTime()
    api.post("/chat/completions").mock(return_value=too_many({"retry-after": "20"}))
    engine = engine_for(client, fake, max_rate_limit_wait_s=60)
    with pytest.raises(RateLimitWaitExceeded) as caught:
        await complete(engine)
    assert caught.value.status == 429 and "max_rate_limit_wait_s" in str(caught.value)
    assert 60 < fake.now - 1000.0 < 100  # four waits of ~20 s, then it stopped
