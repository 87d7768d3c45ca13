"""``similar`` examples by the simulator's /v1/embeddings over loopback, cached in a real SQLite store."""
from __future__ import annotations

import pytest

from prelabel.llm.client import make_client
from prelabel.config import Engine, ModelSpec
from prelabel.fewshot.examples import ExampleSelector
from prelabel.llm.engine import LLMEngine
from prelabel.simulator import SimConfig, Simulator
from prelabel.simulator.answers import embedding
from prelabel.store import SQLiteStore
from prelabel.tasks.base import Example

EXAMPLES = [Example("The parcel arrived late and damaged", "negative"), Example("Great support, thank you", "positive"),
            Example("Refund my order now", "negative"), Example("What time do you open?", "neutral")]
ITEMS = ["my parcel is late and damaged", "thank you for the great support", "refund my order"]


async def test_similar_examples_by_the_endpoints_embeddings_cached_in_the_store(tmp_path):
    simulator = Simulator(SimConfig(latency_s=0))
    url = await simulator.start()
    spec = ModelSpec(name="sim-1", rpm=60_000, tpm=100_000_000)
    client = make_client(spec, api_key="sk-test", base_url=url)
    store = SQLiteStore(tmp_path / "store.db")
    try:
        engine = LLMEngine(client, spec, Engine(embed_batch=3), store.cache_get)
        examples = await engine.embed(engine.prepare_embeddings([e.text for e in EXAMPLES], "sim-embed"))
        assert examples.error is None and simulator.stats.requests == 2  # 4 texts, 3 per request
        assert list(examples.vectors[0]) == pytest.approx(embedding(EXAMPLES[0].text), abs=1e-6)
        assert examples.prompt_tokens > 0
        store.cache_put([entry for entry in examples.to_store if entry])

        selector = ExampleSelector(EXAMPLES, "similar", 1)
        selector.set_vectors(examples.vectors)
        items = await engine.embed(engine.prepare_embeddings(ITEMS, "sim-embed"))
        picks = [selector.select(text, vector)[0] for text, vector in zip(ITEMS, items.vectors)]
        assert picks == EXAMPLES[:3]

        # A second run finds the examples' vectors in the store: nothing is sent, nothing billed.
        requests = simulator.stats.requests
        again = await engine.embed(engine.prepare_embeddings([e.text for e in EXAMPLES], "sim-embed"))
        assert simulator.stats.requests == requests and again.prompt_tokens == 0
        assert [list(v) for v in again.vectors] == [list(v) for v in examples.vectors]
    finally:
        store.close()
        await client.close()
        await simulator.stop()
