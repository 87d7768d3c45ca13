"""The example jobs, unmodified, against the simulator posing as each self-hosted server
(``prelabel.simulator.gaps.PROFILES``): every job finishes with exit 0, no capability failure, and the
confidence the server makes possible (llama-cpp-python's profile was measured for real; the others
are built from the servers' documentation)."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from prelabel.config import EXIT_OK, Engine
from prelabel.queue.submit import submit
from prelabel.simulator import SimConfig, Simulator
from prelabel.simulator.gaps import PROFILES
from prelabel.store import SQLiteStore
from prelabel.worker.runs import Endpoint, run_job

EXAMPLES = Path(__file__).parents[2] / "jobs/examples"
ENGINE = Engine(retry_base_s=0.001, retry_max_s=0.01, commit_interval_s=0.01)
ITEMS = 4


@contextlib.asynccontextmanager
async def server(profile: str):
    sim = Simulator(SimConfig(latency_s=0, gaps=PROFILES[profile], identify=False))
    url = await sim.start()
    try:
        yield sim, url
    finally:
        await sim.stop()


async def run_example(tmp_path: Path, job: str, url: str) -> tuple[int, list[dict], dict]:
    lines = (EXAMPLES / "data/tickets.jsonl").read_text(encoding="utf-8").splitlines()[:ITEMS]
    data = tmp_path / f"{job}.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = SQLiteStore(tmp_path / "prelabel.db")
    try:
        endpoint = Endpoint("sk-local", url)
        job_id = submit(store, EXAMPLES / f"{job}.yaml", input_path=data, out_dir=tmp_path / f"out-{job}",
                        endpoint=endpoint).job_id
        outcome = await run_job(store, job_id, endpoint, ENGINE, "host:1:x")
    finally:
        store.close()
    out = tmp_path / f"out-{job}"
    records = [json.loads(line) for line in (out / "drafts.jsonl").read_text().splitlines()]
    return outcome.exit_code, records, json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_sentiment_against_each_server(tmp_path, profile):
    async with server(profile) as (sim, url):
        code, records, report = await run_example(tmp_path, "sentiment", url)
    assert code == EXIT_OK and report["by_state"] == {"done": ITEMS}
    if "logprobs" in PROFILES[profile].refuse_params:  # a proxy whose backend has none: said, not failed
        assert all(r["confidence"] is None and "no_confidence" in r["flags"] for r in records)
    else:
        assert all(r["confidence"] is not None and r["confidence"] > 0.3 for r in records), records
    assert "request_failed" not in report["by_flag"] and "invalid_output" not in report["by_flag"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_consistency_and_similar_examples_against_each_server(tmp_path, profile):
    """classify_fewshot: n samples (apart where n is ignored or refused) and similar examples
    (lexical: the job names no embedding model)."""
    async with server(profile) as (sim, url):
        code, records, report = await run_example(tmp_path, "classify_fewshot", url)
    assert code == EXIT_OK and report["by_state"] == {"done": ITEMS}
    assert all(r["confidence"] is not None for r in records)
    gaps = PROFILES[profile]
    if gaps.ignore_n or gaps.max_n == 1 or "n" in gaps.refuse_params:
        assert sim.stats.ok >= 5 * ITEMS  # 5 samples per ticket answered as 5 requests, distinct seeds
    else:
        assert sim.stats.ok == ITEMS  # one request of n=5 each


async def test_embeddings_missing_on_a_vllm_chat_server_go_lexical(tmp_path):
    from prelabel.config import ModelSpec
    from prelabel.errors import EmbeddingsUnavailable
    from prelabel.llm.client import make_client
    from prelabel.llm.engine import LLMEngine

    async with server("vllm") as (sim, url):
        spec = ModelSpec(name="m")
        client = make_client(spec, api_key="sk-local", base_url=url)
        engine = LLMEngine(client, spec, ENGINE, lambda key: None)
        result = await engine.embed(engine.prepare_embeddings(["a text"], "m"))
        await client.close()
    assert isinstance(result.error, EmbeddingsUnavailable)


async def test_llama_server_reports_cached_prompt_tokens(tmp_path):
    async with server("llama-server") as (sim, url):
        code, records, report = await run_example(tmp_path, "sentiment", url)
    assert code == EXIT_OK and report["usage"]["cached_prompt_tokens"] > 0


async def test_samples_sent_apart_keep_a_fixed_concurrency(tmp_path):
    """A one-slot server that ignores n, with max_concurrency 1: the 5 samples of an item go one by
    one, so the server never sees two at once (it would answer 503 past one in flight)."""
    from prelabel.simulator.gaps import Gaps
    from tests.conftest import write_job

    sim = Simulator(SimConfig(latency_s=0.01, capacity=1, queue_limit=1, gaps=Gaps(ignore_n=True)))
    url = await sim.start()
    store = SQLiteStore(tmp_path / "prelabel.db")
    try:
        job = write_job(tmp_path / "job", base_url=url, concurrency=1,
                        items=[{"id": f"i{k}", "text": f"great service, thanks #{k}"} for k in range(3)],
                        extra="review: {confidence: consistency, samples: 5}\n")
        job_id = submit(store, job).job_id
        outcome = await run_job(store, job_id, Endpoint("sk-test", url), ENGINE, "host:1:x")
    finally:
        store.close()
        await sim.stop()
    assert outcome.exit_code == EXIT_OK and outcome.run.counts == {"done": 3}
    assert sim.stats.overloaded == 0 and sim.stats.ok == 15
