"""``max_concurrency: auto`` over HTTP (respx): a timeout is a sign of a queue, like a 503."""
from __future__ import annotations

import httpx

from tests.contract.test_engine_http import chat_body, complete, make_engine


async def test_a_timeout_cuts_autos_limit(client, fake, api):
    """With max_concurrency: auto, a request that outwaits timeout_s says the server queues too much:
    the limit is cut, as for a 503 (a one-slot server works on to the end of a request given up)."""
    from prelabel.config import ModelSpec

    api.post("/chat/completions").mock(side_effect=[httpx.ReadTimeout("slow"), httpx.Response(200, json=chat_body())])
    spec = ModelSpec(name="gpt-4o-mini", rpm=10_000_000, tpm=1_000_000_000, max_retries=4, max_concurrency="auto")
    engine = make_engine(client, fake, spec)
    before = engine.slots.limit.limit
    await complete(engine)
    assert engine.slots.limit.limit == before / 2 and engine.stats.timeouts == 1
