"""What answers, in the store: the simulator's answers are never another endpoint's, even on its URL,
and an answer its item could not use leaves the cache with the item's result."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from prelabel.job.inputs import RawItem
from prelabel.queue.submit import submit
from prelabel.worker.runs import Endpoint, run_job
from prelabel.store import ItemResult, JobRecord, SQLiteStore
from tests.conftest import write_job
from tests.integration.test_worker import ENGINE, OWNER, drafts, items, simulator


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


def cache_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM cache").fetchone()[0]


async def test_the_simulators_answers_are_not_served_to_a_real_endpoint_on_the_same_url(store, tmp_path):
    async with simulator(identify=False) as (sim, url):
        job = write_job(tmp_path / "job", items=items(5), base_url=url)
        as_simulator = Endpoint("sk-simulator", url, override=True, simulated=True)
        first = submit(store, job, endpoint=as_simulator)
        await run_job(store, first.job_id, as_simulator, ENGINE, OWNER)
        assert sim.stats.requests == 5
        assert {(d["endpoint"], d["simulated"]) for d in drafts(tmp_path / "job" / "out")} == {("simulator", True)}

        # The same URL, now taken by "a real server": another job, and not one answer from the cache.
        real = Endpoint("sk-test", url)  # the operator runs it against that URL
        second = submit(store, job, endpoint=real)
        assert second.created and second.job_id != first.job_id
        outcome = await run_job(store, second.job_id, real, ENGINE, OWNER)
        assert sim.stats.requests == 10 and outcome.run.stats.cache_hits == 0
        assert {(d["endpoint"], d["simulated"]) for d in drafts(tmp_path / "job" / "out")} == {(url, False)}
        assert outcome.report["simulated"] is False


async def test_an_identifying_simulator_marks_its_drafts_simulated_from_the_cache_too(store, tmp_path):
    async with simulator() as (sim, url):  # it sends x-prelabel-simulator
        job = write_job(tmp_path / "job", items=items(3), base_url=url)
        for new in (False, True):
            outcome = await run_job(store, submit(store, job, new=new).job_id, Endpoint("sk-test", url), ENGINE, OWNER)
            assert {(d["endpoint"], d["simulated"]) for d in drafts(tmp_path / "job" / "out")} == {(url, True)}
            assert outcome.report["simulated"] is True
        assert sim.stats.requests == 3 and outcome.run.stats.cache_hits == 3


def test_complete_takes_the_unusable_answers_out_of_the_cache(store, tmp_path):
    store.create_job(JobRecord("j", "j", {}, None, "sha", "v", "ingesting", 0.0, 0, 0.0),
                     [RawItem(1, "a", "text a")])
    (item,) = store.lease("j", OWNER, 1, 0.0, 60.0)
    store.cache_put([("kept", {"content": "ok"}), ("broken", {"content": "not json"})])
    store.complete("j", OWNER, [ItemResult(item.seq, "done", 0.0, [], uncache=["broken"])])
    assert store.cache_get("kept") == {"content": "ok"} and store.cache_get("broken") is None
    assert cache_rows(tmp_path / "prelabel.db") == 1


async def test_variants_without_a_recheck_say_their_label_came_from_a_simulator(store, tmp_path):
    extra = "augment:\n  recheck: false\n  seed: 7\n  steps:\n    - {kind: noise, n: 2, ops: [keyboard, swap]}\n"
    async with simulator() as (_, url):  # it says it is one
        data = [{"id": f"s{k}", "text": f"My package number {k} arrived late and broken, please help"} for k in range(2)]
        job = write_job(tmp_path / "job", items=data, base_url=url, extra=extra)
        await run_job(store, submit(store, job).job_id, Endpoint("sk-test", url), ENGINE, OWNER)
    records = drafts(tmp_path / "job" / "out")
    assert any(r["augmentation"] for r in records), "no variants were made"
    assert {(r["endpoint"], r["simulated"]) for r in records} == {(url, True)}
