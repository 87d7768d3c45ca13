"""The simulator's enforcement styles and capacity mode: what each admits, and what it says."""
from __future__ import annotations

import asyncio
import contextlib

import openai
import pytest

from prelabel.simulator import SimConfig, Simulator
from prelabel.simulator.limits import FixedWindow, TokenBucket, Window

def ask(text: str) -> dict:
    return {"model": "sim-1", "messages": [{"role": "user", "content": text}], "temperature": 0}


@contextlib.asynccontextmanager
async def running(now: list[float] | None = None, **overrides):
    simulator = Simulator(SimConfig(**{"latency_s": 0, **overrides}))
    if now is not None:
        simulator._clock = lambda: now[0]  # a hand-driven clock: nothing waits for a window
    url = await simulator.start()
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
    try:
        yield simulator, client
    finally:
        await client.close()
        await simulator.stop()


# --- the limits alone, on a hand-driven clock -------------------------------------------------------

def test_rolling_second_reports_per_minute():
    w = Window(6000, 1.0)  # 100 in any second
    for i in range(60):
        w.add(1, 10.0 + i * 0.01)
    assert w.remaining(10.6) == 40 * 60
    assert w.reset_in(10.6) == pytest.approx(0.4)  # the oldest entry leaves at 11.0
    for i in range(40):
        w.add(1, 10.6)
    assert w.wait_for(1, 10.6) == pytest.approx(0.4) and w.remaining(10.6) == 0


def test_fixed_window_resets_on_the_minute():
    w = FixedWindow(120)
    for _ in range(120):
        assert w.wait_for(1, 130.0) == 0.0
        w.add(1, 130.0)
    assert w.remaining(130.0) == 0 and w.wait_for(1, 130.0) == pytest.approx(50.0)
    assert w.wait_for(1, 180.0) == 0.0 and w.remaining(180.0) == 120  # a new minute, a new quota


def test_token_bucket_bursts_one_second_and_refills_continuously():
    b = TokenBucket(6000)  # 100/s, 100 of burst
    for _ in range(100):
        assert b.wait_for(1, 0.0) == 0.0
        b.add(1, 0.0)
    assert b.wait_for(1, 0.0) == pytest.approx(0.01)
    assert b.wait_for(1, 0.05) == 0.0 and b.remaining(0.05) == 5 * 60
    assert b.reset_in(0.05) == pytest.approx(0.95)


# --- over HTTP --------------------------------------------------------------------------------------

async def test_openai_style_429_has_both_retry_afters():
    now = [100.0]
    async with running(now, rpm=120) as (_, client):  # 2 in any second
        first = await client.chat.completions.with_raw_response.create(**ask("a"))
        await client.chat.completions.create(**ask("b"))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**ask("c"))
    assert first.headers["x-ratelimit-remaining-requests"] == "60"  # one left in the second, x 60
    headers = caught.value.response.headers
    assert headers["retry-after-ms"] == "1000" and headers["retry-after"] == "1"


async def test_azure_style_429_says_when_the_minute_starts_again():
    now = [130.0]
    async with running(now, rpm=2, style="azure") as (_, client):
        await client.chat.completions.create(**ask("a"))
        second = await client.chat.completions.with_raw_response.create(**ask("b"))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**ask("c"))
        now[0] = 180.0
        await client.chat.completions.create(**ask("d"))
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert second.headers["x-ratelimit-reset-requests"] == "50s"
    headers = caught.value.response.headers
    assert headers["retry-after"] == "50" and "retry-after-ms" not in headers


async def test_gateway_style_says_nothing_about_its_limits():
    now = [5.0]
    async with running(now, rpm=60, style="gateway") as (simulator, client):
        first = await client.chat.completions.with_raw_response.create(**ask("a"))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**ask("b"))
    assert not [h for h in first.headers if h.startswith("x-ratelimit")]
    assert not [h for h in caught.value.response.headers if h.startswith(("x-ratelimit", "retry-after"))]
    assert simulator.stats.admitted == 1 and simulator.stats.rate_limited == 1


async def test_bucket_style_admits_a_burst_then_the_refill():
    now = [0.0]
    async with running(now, rpm=180, style="bucket") as (simulator, client):  # 3/s, 3 of burst
        for text in "abc":
            await client.chat.completions.create(**ask(text))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**ask("d"))
        now[0] = 1 / 3
        await client.chat.completions.create(**ask("e"))
    assert caught.value.response.headers["retry-after-ms"] == "334"
    assert simulator.stats.admitted == 4 and simulator.stats.max_gap == pytest.approx(1 / 3)


async def test_capacity_mode_queues_past_k_and_answers_503_past_the_queue_limit():
    async with running(latency_s=0.05, capacity=2, queue_limit=4) as (simulator, client):
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(client.chat.completions.create(**ask(str(i))) for i in range(6)),
                                       return_exceptions=True)
        elapsed = loop.time() - started
    overloaded = [r for r in results if isinstance(r, openai.InternalServerError)]
    assert len(overloaded) == 2 and simulator.stats.overloaded == 2
    assert overloaded[0].status_code == 503
    assert elapsed >= 0.1  # four admitted, two at a time: two rounds of latency
