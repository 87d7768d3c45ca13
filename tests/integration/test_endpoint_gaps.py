"""Self-hosted servers' capability gaps, each a simulator switch, run end to end by the worker:
every job finishes (a missing feature is never an outage) with a confidence that means something."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from prelabel.llm.capabilities import JSON_OBJECT_SCHEMA, Capabilities
from prelabel.llm.client import make_client
from prelabel.config import EXIT_OK, Engine, ModelSpec
from prelabel.errors import EmbeddingsUnavailable
from prelabel.llm.engine import LLMEngine
from prelabel.queue.submit import submit
from prelabel.worker.runs import Endpoint, run_job
from prelabel.simulator import SimConfig, Simulator
from prelabel.simulator.gaps import Gaps
from prelabel.store import SQLiteStore
from tests.conftest import LABELS, TEXTS, write_job

ENGINE = Engine(retry_base_s=0.001, retry_max_s=0.01, commit_interval_s=0.01)
OWNER = "host:1:x"
CONSISTENCY = "review: {confidence: consistency, samples: 3}\n"


@contextlib.asynccontextmanager
async def simulator(**gaps):
    sim = Simulator(SimConfig(latency_s=0, gaps=Gaps(**gaps)))
    url = await sim.start()
    try:
        yield sim, url
    finally:
        await sim.stop()


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


def items(n: int) -> list[dict]:
    return [{"id": f"i{k}", "text": f"{TEXTS[k % len(TEXTS)]} #{k:04d}."} for k in range(n)]


async def run(store, job_dir: Path, url: str, extra: str = "", n: int = 8, new: bool = False):
    job = write_job(job_dir, items=items(n), base_url=url, extra=extra)
    job_id = submit(store, job, new=new).job_id
    outcome = await run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER)
    records = [json.loads(line) for line in (job_dir / "out" / "drafts.jsonl").read_text().splitlines()]
    return outcome, records


def stored_caps(store, url: str) -> Capabilities:
    keys = [k for k in _cache_keys(store) if k.startswith("capabilities:")]
    assert len(keys) == 1 and "sk-test" not in keys[0]
    return Capabilities.from_json(store.cache_get(keys[0]))


def _cache_keys(store) -> list[str]:
    return [row[0] for row in store._db.execute("SELECT key FROM cache")]


async def test_refused_json_schema_falls_back_to_json_object_with_its_schema(store, job_dir):
    async with simulator(refuse_json_schema=True) as (sim, url):
        outcome, records = await run(store, job_dir, url)
        assert outcome.exit_code == EXIT_OK and outcome.run.counts == {"done": 8}
        # llama-cpp-python refuses with a 500: tried once more (a 500 may merely mention a schema), then
        # given up: at most two refusals per request in flight
        assert sim.stats.requests <= 8 + 2 * 8
        assert all(r["label"] in LABELS and r["confidence"] is not None for r in records)
        assert stored_caps(store, url).structured == JSON_OBJECT_SCHEMA
        before = sim.stats.requests
        outcome, _ = await run(store, job_dir / "again", url, new=True, n=9)
        assert outcome.exit_code == EXIT_OK
        # the 8 answered before come from the cache; the new item is sent once, in the learned form
        assert sim.stats.requests - before == 1


async def test_ignored_n_samples_apart_with_distinct_seeds(store, job_dir):
    async with simulator(ignore_n=True) as (sim, url):
        outcome, records = await run(store, job_dir, url, CONSISTENCY)
    assert outcome.exit_code == EXIT_OK and outcome.run.counts == {"done": 8}
    assert all(r["confidence"] is not None for r in records), "not a silent no_confidence"
    assert stored_caps(store, url).n is False


async def test_n_refused_above_the_slot_count_is_no_outage(store, job_dir):
    async with simulator(max_n=1) as (sim, url):
        outcome, records = await run(store, job_dir, url, CONSISTENCY, n=12)
    assert outcome.exit_code == EXIT_OK and outcome.run.counts == {"done": 12}
    assert all(r["confidence"] is not None for r in records)


async def test_logprobs_only_with_top_logprobs(store, job_dir):
    async with simulator(logprobs_need_top=True) as (sim, url):
        outcome, records = await run(store, job_dir, url)
    assert outcome.exit_code == EXIT_OK
    assert all(r["confidence"] is not None and "no_confidence" not in r["flags"] for r in records)


async def test_pre_constraint_logprobs_still_give_a_high_confidence(store, job_dir):
    # llama.cpp: the JSON framing at e^-9 and junk leading every choice; the exact characters'
    # probability is ~0, the label's share among the labels is what the model meant.
    async with simulator(pre_constraint_logprobs=True) as (sim, url):
        outcome, records = await run(store, job_dir, url)
    assert outcome.exit_code == EXIT_OK
    confident = [r for r in records if r["confidence"] is not None and r["confidence"] >= 0.7]
    assert len(confident) >= 6, [r["confidence"] for r in records]
    assert all(r["runner_up"] in LABELS and r["margin"] is not None for r in records)


async def test_no_usage_is_charged_by_our_own_count(store, job_dir):
    async with simulator(no_usage=True) as (sim, url):
        outcome, records = await run(store, job_dir, url)
    assert outcome.exit_code == EXIT_OK
    assert all(r["usage"]["prompt_tokens"] > 0 for r in records)
    assert stored_caps(store, url).usage is False


async def test_no_embeddings_is_unavailable_not_retried():
    async with simulator(no_embeddings=True) as (sim, url):
        spec = ModelSpec(name="gpt-4o-mini", max_retries=3)
        client = make_client(spec, api_key="sk-test", base_url=url)
        engine = LLMEngine(client, spec, ENGINE, lambda key: None)
        result = await engine.embed(engine.prepare_embeddings(["a", "b"], "text-embedding-3-small"))
        await client.close()
    assert isinstance(result.error, EmbeddingsUnavailable) and sim.stats.requests == 1


async def test_every_gap_at_once_like_llama_cpp_python(store, job_dir):
    async with simulator(refuse_json_schema=True, ignore_n=True, logprobs_need_top=True,
                         pre_constraint_logprobs=True, no_usage=True) as (sim, url):
        outcome, records = await run(store, job_dir, url, CONSISTENCY.replace("consistency", "both"))
    assert outcome.exit_code == EXIT_OK and outcome.run.counts == {"done": 8}
    assert all(r["confidence"] is not None for r in records)


# --- prelabel probe -------------------------------------------------------------------------------

async def test_probe_reads_each_gap_off_the_server():
    from prelabel.llm.probe import probe

    async with simulator(refuse_json_schema=True, ignore_n=True, logprobs_need_top=True, no_usage=True,
                         no_embeddings=True) as (sim, url):
        spec = ModelSpec(name="gpt-4o-mini")
        client = make_client(spec, api_key="sk-test", base_url=url)
        caps, rows = await probe(client, "gpt-4o-mini")
        await client.close()
    assert caps.structured == JSON_OBJECT_SCHEMA and caps.n is False and caps.usage is False
    assert caps.top_logprobs and caps.logprobs_seen and caps.embeddings is False
    table = {r.capability: r.value for r in rows}
    assert table["logprobs"] == "no" and table["top_logprobs"] == "yes" and table["n"] == "no"
    assert sim.stats.requests <= 10  # a few tiny requests, none retried


async def test_probe_of_a_full_endpoint():
    from prelabel.llm.probe import probe

    async with simulator() as (sim, url):
        spec = ModelSpec(name="gpt-4o-mini")
        client = make_client(spec, api_key="sk-test", base_url=url)
        caps, rows = await probe(client, "gpt-4o-mini", "text-embedding-3-small")
        await client.close()
    assert caps.structured == "json_schema" and caps.n and caps.usage and caps.embeddings
    assert all(r.value != "no" for r in rows)


async def test_like_llama_cpp_python_answers_embeddings_per_token_so_examples_go_lexical():
    # The README: llama-cpp-python's server returns per-token embeddings (similar examples go lexical).
    sim = Simulator(SimConfig(latency_s=0, gaps=Gaps.llama_cpp_python()))
    url = await sim.start()
    try:
        spec = ModelSpec(name="gpt-4o-mini", max_retries=3)
        client = make_client(spec, api_key="sk-test", base_url=url)
        engine = LLMEngine(client, spec, ENGINE, lambda key: None)
        result = await engine.embed(engine.prepare_embeddings(["a b", "c"], "text-embedding-3-small"))
        await client.close()
    finally:
        await sim.stop()
    assert isinstance(result.error, EmbeddingsUnavailable) and sim.stats.requests == 1
