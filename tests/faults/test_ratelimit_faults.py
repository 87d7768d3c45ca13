"""A run that waits on the rate limit past model.max_rate_limit_wait_s stops with exit 8 and loses nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

from prelabel.config import EXIT_RATE_LIMITED, Engine
from prelabel.queue.submit import submit
from prelabel.worker.runs import Endpoint, run_job
from prelabel.store import SQLiteStore
from tests.conftest import write_job
from tests.integration.test_worker import simulator


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


async def test_waiting_past_the_limit_stops_the_run_and_puts_the_items_back(store, job_dir):
    # A gateway admitting one request a second, no retry-after: three items at once, and a job that
    # allows 50 ms of waiting on the limit. About a second of real time (the limiter's own wait).
    async with simulator(rpm=60, style="gateway") as (sim, url):
        job = write_job(job_dir, base_url=url, concurrency=3,
                        items=[{"id": f"i{n}", "text": f"text {n}"} for n in range(3)])
        job.write_text(job.read_text().replace("max_retries: 4", "max_retries: 4, max_rate_limit_wait_s: 0.05"))
        job_id = submit(store, job).job_id
        outcome = await run_job(store, job_id, Endpoint("sk-test", url), Engine(commit_interval_s=0.01), "host:1:x")
    assert outcome.exit_code == EXIT_RATE_LIMITED
    assert "max_rate_limit_wait_s" in outcome.report["error"] and "nothing is lost" in outcome.report["error"]
    counts = store.counts(job_id)
    assert counts.get("failed", 0) == 0 and counts.get("done", 0) >= 1
    assert counts.get("pending", 0) == 3 - counts["done"]  # back in the queue, not failed


async def test_auto_concurrency_rides_a_self_hosted_server_without_503s(store, job_dir):
    # 4 served at once at 50 ms, 503 past 16 in flight (the server, scaled down): auto starts
    # at 4, doubles while no queue shows, and keeps the queue short; a fixed 64 would draw 503s.
    n = 160
    async with simulator(capacity=4, queue_limit=16, latency_s=0.05) as (sim, url):
        job = write_job(job_dir, base_url=url, items=[{"id": f"i{i}", "text": f"text {i}"} for i in range(n)])
        job.write_text(job.read_text().replace("max_concurrency: 8", "max_concurrency: auto"))
        job_id = submit(store, job).job_id
        outcome = await run_job(store, job_id, Endpoint("sk-test", url), Engine(commit_interval_s=0.01), "host:1:x")
    assert outcome.exit_code == 0 and store.counts(job_id) == {"done": n}
    assert sim.stats.overloaded <= 0.01 * sim.stats.requests  # the goal: < 1% 503
