"""The contract tests' fixtures: a fake clock, an SDK client on a plain httpx transport, respx's mock."""
from __future__ import annotations

import httpx
import openai
import pytest
import respx

from tests.contract.test_engine_http import BASE, KEY, FakeTime


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
