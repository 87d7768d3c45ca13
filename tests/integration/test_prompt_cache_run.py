"""Prompt caching end to end: the simulator reports cached prompt tokens as OpenAI does (a prompt's
leading messages sent before, from 1,024 tokens), and the worker's ledger, report.json and the cost
bill them at the cached price."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prelabel.budget.pricing import cost_usd, price_for
from prelabel.config import EXIT_OK, Engine
from prelabel.queue.submit import submit
from prelabel.simulator import SimConfig, Simulator
from prelabel.store import SQLiteStore
from prelabel.worker.runs import Endpoint, run_job
from tests.conftest import TEXTS, write_job

ENGINE = Engine(retry_base_s=0.001, retry_max_s=0.01, commit_interval_s=0.01)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


async def _run(store, job_dir: Path, guideline_words: int, cache_min: int | None = 1024):
    job_dir.mkdir(parents=True)
    (job_dir / "guide.md").write_text(" ".join(["Read the whole ticket before choosing a label."] * guideline_words))
    sim = Simulator(SimConfig(latency_s=0, prompt_cache_min_tokens=cache_min))
    url = await sim.start()
    try:
        items = [{"id": f"i{k}", "text": f"{TEXTS[k % len(TEXTS)]} #{k}"} for k in range(10)]
        job = write_job(job_dir, items=items, base_url=url, concurrency=1)
        job.write_text(job.read_text().replace("task: {kind: classify,", "task: {kind: classify, guidelines: guide.md,"))
        job_id = submit(store, job).job_id
        outcome = await run_job(store, job_id, Endpoint("sk-test", url), ENGINE, "host:1:x")
    finally:
        await sim.stop()
    report = json.loads((job_dir / "out" / "report.json").read_text())
    return outcome, report


async def test_cached_prompt_tokens_are_recorded_and_billed_at_the_cached_price(store, tmp_path):
    outcome, report = await _run(store, tmp_path / "job", guideline_words=150)
    assert outcome.exit_code == EXIT_OK
    usage = report["usage"]
    # One request at a time: every prompt after the first finds its system prompt cached.
    assert usage["requests_billed"] == 10 and usage["cached_prompt_tokens"] > 9 * 1024
    price = price_for("gpt-4o-mini")
    expected = cost_usd(price, usage["prompt_tokens"], usage["completion_tokens"], usage["cached_prompt_tokens"])
    assert usage["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert usage["cost_usd"] < cost_usd(price, usage["prompt_tokens"], usage["completion_tokens"])
    assert report["budget"]["spent_cost_usd"] == pytest.approx(expected, abs=1e-6)


async def test_a_short_prompt_is_not_cached(store, tmp_path):
    outcome, report = await _run(store, tmp_path / "job", guideline_words=5)
    assert outcome.exit_code == EXIT_OK and report["usage"]["cached_prompt_tokens"] == 0
