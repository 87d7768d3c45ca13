"""A draft that failed after its re-asks keeps the model's last raw answer (``raw_output``), for the
reviewer who reads its error; it is redacted in the store like the error."""
from __future__ import annotations

import json
import time
from pathlib import Path

from prelabel.redact import REDACTED, redact_error
from prelabel.store import ItemResult, JobRecord, SQLiteStore
from prelabel.job.inputs import RawItem
from tests.conftest import write_job
from tests.integration.test_worker import drafts, items, run, simulator

KEY = "sk-test-SECRET123456789abcdef"


async def test_a_draft_failed_after_its_reasks_keeps_the_last_raw_answer(tmp_path: Path, job_dir: Path):
    store = SQLiteStore(tmp_path / "prelabel.db")
    try:
        async with simulator(invalid_rate=1.0) as (sim, url):
            outcome = await run(store, write_job(job_dir, items=items(6), base_url=url), url)
    finally:
        store.close()
    assert outcome.report["by_state"] == {"failed": 6}
    for record in drafts(job_dir / "out"):
        assert record["error"].startswith("invalid output after 1 re-asks")
        assert isinstance(record["raw_output"], str) and record["raw_output"]
        assert record["raw_output"] in sim.stats.by_content or record["raw_output"].startswith(("{", "["))


def test_done_drafts_have_no_raw_output_and_the_field_is_redacted_like_the_error():
    assert redact_error({"error": "x", "raw_output": f'{{"label": "{KEY}"}}'})["raw_output"] == \
        f'{{"label": "{REDACTED}"}}'
    clean = {"error": None, "raw_output": None}
    assert redact_error(clean) is clean


def test_the_store_keeps_raw_output_redacted(tmp_path: Path):
    store = SQLiteStore(tmp_path / "prelabel.db")
    try:
        job = JobRecord("j1", "t", {}, None, "sha", "p@1", "queued", 0.0, 0, 0.0)
        store.create_job(job, [RawItem(1, "a", "t")])
        [leased] = store.lease("j1", "o", 1, time.time(), 60.0)
        record = {"id": "a", "text": "t", "state": "failed", "error": "invalid output after 1 re-asks: no",
                  "raw_output": json.dumps({"label": KEY}), "review_priority": 1.0}
        store.complete("j1", "o", [ItemResult(leased.seq, "failed", 1.0, [record])], [])
        [stored] = list(store.iter_records("j1"))
    finally:
        store.close()
    assert stored["raw_output"] == json.dumps({"label": REDACTED}) and KEY not in json.dumps(stored)
