"""A worker that lost leases while it was paused (issue 11, the tester's SIGSTOP run) sends nothing
more for them: it learns which it lost at its next renew, or by its own clock before a request goes
out, and drops them. At most the requests on the wire when it lost them are paid twice. And a worker
holds only what its share of the rate sends in part of a lease, so that two workers split a job.

No real pause: the worker's clock jumps past its lease (as a process resumed after SIGSTOP sees it),
or the store's renew is where another worker takes the items over. On SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from prelabel.config import Engine, JobSpec
from prelabel.llm.client import make_client
from prelabel.llm.engine import LLMEngine
from prelabel.queue.submit import submit
from prelabel.simulator import SimConfig, Simulator
from prelabel.store import open_store
from prelabel.tasks import build_task
from prelabel.worker.coordinator import MemoryCoordinator
from prelabel.worker.runner import JobRunner
from prelabel.worker.runs import Endpoint, run_job
from tests.conftest import write_job
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url  # the fixtures: SQLite and PostgreSQL
LEASE_S = 10.0
HOST_D = "host-d:1:dddddd"


def _job(tmp_path: Path, n: int, rpm: int, concurrency="4") -> Path:
    job = write_job(tmp_path / "job", items=[{"id": f"i{i}", "text": f"item {i}"} for i in range(n)],
                    concurrency=concurrency)
    job.write_text(job.read_text().replace("rpm: 60000", f"rpm: {rpm}"))
    return job


def _runner(store, job_id: str, url_: str, settings: Engine, owner: str, clock) -> JobRunner:
    job = store.get_job(job_id)
    spec = JobSpec.model_validate(job.spec)
    client = make_client(spec.model, api_key="sk-test", base_url=url_)
    engine = LLMEngine(client, spec.model, settings, store.cache_get, identity=url_)
    return JobRunner(store, job, spec, build_task(spec), engine, settings, owner, clock=clock)


def _per_item(answered) -> dict[int, int]:
    """The simulator's 200s per item, from the user message that holds the item's text."""
    counts: dict[int, int] = {}
    for content, k in list(answered.items()):
        if (found := re.search(r"\bitem (\d+)\b", content)) is not None:
            counts[int(found.group(1))] = counts.get(int(found.group(1)), 0) + k
    return counts


def _taken_by(store, job_id: str, owner: str, n: int) -> list[int]:
    return [seq for seq in range(n) if (item := store.item(job_id, seq)).state == "leased" and item.lease_owner == owner]


async def _paused_worker(tmp_path: Path, url_: str, takeover_at_renew: bool):
    """Worker F runs a 60-item job; after 10 requests it is 'paused' past its lease and host D takes
    over every item F holds. Returns (requests F sent for D's items after that, requests F had on the
    wire then, the lost-lease requests on the ledger beyond those answered before the pause (results
    not yet committed), D's items, the job's counts)."""
    n = 60
    sim = Simulator(SimConfig(latency_s=0.02, track_contents=True))
    sim_url = await sim.start()
    store = open_store(url_)
    # lease_ahead 4: F holds 8-16 items for its 4 slots, so there are always some not started
    settings = Engine(lease_s=LEASE_S, heartbeat_s=LEASE_S / 3 if not takeover_at_renew else 0.05,
                      retry_base_s=0.001, retry_max_s=0.01, commit_interval_s=0.01, lease_ahead=4)
    jump = [0.0]
    seen: dict = {}
    try:
        job_id = submit(store, _job(tmp_path, n, rpm=3000)).job_id
        runner = _runner(store, job_id, sim_url, settings, "host-f:1:ffffff", lambda: time.time() + jump[0])

        def holding() -> bool:  # F holds items it has not started: the pause has something to strand
            return runner._labels_held - runner.live.sending >= 5

        def take_over() -> None:
            # D's clock is past F's lease: it takes every item F holds (expired leases come first).
            later = time.time() + LEASE_S + 1
            leased = store.counts(job_id).get("leased", 0)
            seen["on_wire"] = runner.live.sending
            seen["answered"] = dict(sim.stats.answered)
            seen["requests"] = sim.stats.requests
            store.lease(job_id, HOST_D, leased, later, 3600)

        if takeover_at_renew:  # the renew that follows the takeover is the one that reports it
            real_renew = store.renew

            def renew(owner, now, lease_s):
                if "taken" not in seen and sim.stats.requests >= 10 and holding():
                    store.lease(job_id, HOST_D, store.counts(job_id).get("leased", 0), time.time() + LEASE_S + 1, 3600)
                    seen["taken"] = True
                return real_renew(owner, now, lease_s)

            class Learned(set):
                """F's lost leases: what it had on the wire when it learned of them (in its loop)."""

                def add(self, lost) -> None:
                    if "answered" not in seen:
                        seen["on_wire"], seen["answered"] = runner.live.sending, dict(sim.stats.answered)
                    super().add(lost)

            store.renew = renew
            runner._lost = Learned()
            await runner.run()
        else:
            async def pause() -> None:
                while (sim.stats.requests < 10 or not holding()) and sim.stats.requests < 40:
                    await asyncio.sleep(0.002)
                take_over()  # one step of the loop: F sends nothing meanwhile
                jump[0] = LEASE_S + 1  # ...and it wakes up with its clock past its lease

            await asyncio.gather(runner.run(), pause())
        await runner.engine.client.close()
        assert "answered" in seen, "F never learned it lost leases"
        mine = _taken_by(store, job_id, HOST_D, n)
        after, at = _per_item(sim.stats.answered), _per_item(seen["answered"])
        assert sum(after.values()) >= n - len(mine)  # the simulator saw the texts of the items F finished
        again = sum(after.get(seq, 0) - at.get(seq, 0) for seq in mine)
        # ...and those answered before it, whose results were not committed yet: paid before the pause
        before = sum(at.get(seq, 0) for seq in mine)
        lost = store.usage_totals(job_id)["paid_for_lost_leases"]
        counts = store.counts(job_id)
    finally:
        store.close()
        await sim.stop()
    return again, seen["on_wire"], lost["requests"] - before, mine, counts


async def test_a_worker_resumed_past_its_lease_drops_what_it_lost_before_sending(tmp_path: Path, url):
    again, on_wire, lost, mine, counts = await _paused_worker(tmp_path, url, takeover_at_renew=False)
    assert len(mine) > 4  # F held more than it had on the wire: the test tells dropped from sent
    assert again <= on_wire, (again, on_wire)  # what was on the wire finished; nothing else was asked
    assert lost <= on_wire, (lost, again, on_wire, mine)
    assert counts == {"done": 60 - len(mine), "leased": len(mine)}  # D's items are D's, untouched by F


async def test_a_renew_that_reports_lost_leases_stops_their_requests(tmp_path: Path, url):
    again, on_wire, lost, mine, counts = await _paused_worker(tmp_path, url, takeover_at_renew=True)
    assert len(mine) > 4
    assert again <= on_wire, (again, on_wire)
    assert lost <= on_wire, (lost, again, on_wire, mine)
    assert counts == {"done": 60 - len(mine), "leased": len(mine)}


async def test_two_workers_at_a_low_rate_split_a_job_evenly(tmp_path: Path, url):
    # max_concurrency: auto, as the example jobs: the old lease (2 x 256 slots) gave the first worker all.
    n = 60
    sim = Simulator(SimConfig(latency_s=0.01))
    sim_url = await sim.start()
    store = open_store(url)
    settings = Engine(lease_s=8.0, heartbeat_s=2.0, retry_base_s=0.001, retry_max_s=0.01, commit_interval_s=0.01,
                      share_interval_s=0.2, share_stale_s=0.6, share_settle_s=0.3)
    coordinator = MemoryCoordinator()
    try:
        job_id = submit(store, _job(tmp_path, n, rpm=1200, concurrency="auto")).job_id
        outcomes = await asyncio.gather(*(
            run_job(store, job_id, Endpoint("sk-test", sim_url), settings, f"host-{h}:1:x", coordinator=coordinator)
            for h in "ab"))
        assert store.counts(job_id) == {"done": n}
    finally:
        store.close()
        await sim.stop()
    done = [o.run.stats.requests for o in outcomes]
    assert sum(done) == n
    assert min(done) >= 0.3 * n, done  # roughly even: each worker holds ~10 s x 25% of its 10/s


async def test_work_once_names_when_a_stopped_workers_items_come_back(tmp_path: Path, url):
    from prelabel.cli import _elsewhere

    sim = Simulator(SimConfig(latency_s=0.0))
    sim_url = await sim.start()
    store = open_store(url)
    try:
        job_id = submit(store, _job(tmp_path, 12, rpm=60000)).job_id
        leased_at = time.time()
        store.lease(job_id, "host-z:1:zzzzzz", 5, leased_at, 45.0)  # then host-z stopped beating
        outcome = await run_job(store, job_id, Endpoint("sk-test", sim_url), Engine(commit_interval_s=0.01),
                                "host-a:1:aaaaaa")
        assert store.counts(job_id) == {"done": 7, "leased": 5}
    finally:
        store.close()
        await sim.stop()
    assert outcome.report is None and outcome.elsewhere == (5, leased_at + 45.0)
    said = _elsewhere(outcome)
    assert "5 items leased to other workers" in said
    assert time.strftime("%H:%M:%S UTC", time.gmtime(leased_at + 45.0)) in said
