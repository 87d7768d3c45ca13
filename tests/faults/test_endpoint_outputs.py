"""An endpoint that dies mid-run: the run stops with exit 6, and what finished is written anyway
(before, a run that ended with exit 6 wrote no report.json and no drafts, not even the finished ones)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prelabel.config import EXIT_UNAVAILABLE, Engine
from prelabel.queue.submit import submit
from prelabel.worker.runs import Endpoint, run_job
from prelabel.simulator import SimConfig, Simulator
from prelabel.store import SQLiteStore
from tests.conftest import TEXTS, write_job


class _DiesAfter(Simulator):
    """Answers the first ``ok`` requests, then 500 for ever."""

    def __init__(self, ok: int) -> None:
        super().__init__(SimConfig(latency_s=0))
        self.left = ok

    async def _gate(self, tokens, model):
        self.left -= 1
        if self.left >= 0:
            return await super()._gate(tokens, model)
        return self._respond(500, {"error": {"message": "model crashed", "type": "server_error"}})


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


async def test_exit_6_writes_what_finished(store, tmp_path):
    sim = _DiesAfter(ok=4)
    url = await sim.start()
    try:
        data = [{"id": f"i{k}", "text": f"{TEXTS[k % len(TEXTS)]} #{k:04d}."} for k in range(30)]
        job = write_job(tmp_path / "job", items=data, base_url=url, concurrency=1)
        job.write_text(job.read_text().replace("max_retries: 4", "max_retries: 0"))
        job_id = submit(store, job).job_id
        outcome = await run_job(store, job_id, Endpoint("sk-test", url),
                                Engine(retry_base_s=0.001, retry_max_s=0.002, commit_interval_s=0.01,
                                       outage_after=3), "host:1:x")
    finally:
        await sim.stop()
    assert outcome.exit_code == EXIT_UNAVAILABLE and "kept failing" in outcome.report["error"]
    out = tmp_path / "job" / "out"
    report = json.loads((out / "report.json").read_text())
    records = [json.loads(line) for line in (out / "drafts.jsonl").read_text().splitlines()]
    done = [r for r in records if r["state"] == "done"]
    assert len(done) == 4 and report["by_state"]["done"] == 4
    assert store.counts(job_id).get("pending", 0) == 26  # the rest waits in the queue, nothing lost
