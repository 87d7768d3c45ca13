"""Azure OpenAI (model.provider: azure) through the SDK's AsyncAzureOpenAI: the deployment's path,
the api-version query, the api-key header, and Azure's 429 with its retry-after honoured."""
from __future__ import annotations

import json
import random

import httpx
import pytest
import respx

from prelabel.llm.client import make_client
from prelabel.config import Engine, ModelSpec
from prelabel.llm.engine import LLMEngine

ENDPOINT = "https://myres.openai.azure.com"
KEY = "azure-key-0123456789abcdef"
SPEC = ModelSpec(name="gpt-4o-mini", provider="azure", deployment="labels-4o", api_version="2024-10-21",
                 max_retries=2)
CHAT = f"{ENDPOINT}/openai/deployments/labels-4o/chat/completions"
BODY = {"id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": '{"label": "positive"}', "refusal": None}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}}


class FakeTime:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


async def ask(engine: LLMEngine):
    request = engine.request([{"role": "user", "content": "hi"}], None, 16)
    return await engine.send(engine.prepare(request), 40)


@pytest.fixture
def fake():
    return FakeTime()


async def test_the_deployment_path_api_version_and_api_key_header(fake):
    client = make_client(SPEC, api_key=KEY, base_url=ENDPOINT)
    with respx.mock(using="httpx", assert_all_called=True) as mock:
        route = mock.post(CHAT).mock(return_value=httpx.Response(200, json=BODY))
        engine = LLMEngine(client, SPEC, Engine(), lambda key: None, sleep=fake.sleep, clock=fake.clock)
        completion = await ask(engine)
    await client.close()
    sent = route.calls.last.request
    assert sent.url.params["api-version"] == "2024-10-21"
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
    assert json.loads(sent.content)["model"] == "gpt-4o-mini"
    assert completion.content == '{"label": "positive"}'


async def test_azures_429_waits_as_its_retry_after_says(fake):
    client = make_client(SPEC, api_key=KEY, base_url=ENDPOINT)
    limited = httpx.Response(429, headers={"retry-after": "7"}, json={"error": {
        "code": "429", "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                                  "have exceeded call rate limit of your current deployment."}})
    with respx.mock(using="httpx") as mock:
        route = mock.post(CHAT).mock(side_effect=[limited, httpx.Response(200, json=BODY)])
        engine = LLMEngine(client, SPEC, Engine(), lambda key: None, sleep=fake.sleep, clock=fake.clock,
                           rng=random.Random(0))
        await ask(engine)
    await client.close()
    assert route.call_count == 2 and engine.stats.rate_limited == 1
    assert max(fake.slept) >= 7.0


async def test_the_deployment_defaults_to_the_model_name(fake):
    spec = ModelSpec(name="gpt-4o-mini", provider="azure")
    client = make_client(spec, api_key=KEY, base_url=ENDPOINT)
    with respx.mock(using="httpx") as mock:
        route = mock.post(f"{ENDPOINT}/openai/deployments/gpt-4o-mini/chat/completions").mock(
            return_value=httpx.Response(200, json=BODY))
        engine = LLMEngine(client, spec, Engine(), lambda key: None, sleep=fake.sleep, clock=fake.clock)
        await ask(engine)
    await client.close()
    assert route.called
