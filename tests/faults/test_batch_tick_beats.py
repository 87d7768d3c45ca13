"""A slow Batch API tick and another worker's tick on the same job, on SQLite and PostgreSQL.

A tick of a big job writes 50,000-line input files, uploads them, streams output files and commits for
minutes; cron (or another host) starts the next tick meanwhile. The clock is injected: each input
file written (the ``intent`` checkpoint) takes 0.6 of a lease on it, so a three-file tick lasts 1.8
leases; nothing sleeps. The second tick runs, to its end, from inside the first (in a thread, with a
store connection of its own), at the first's third file:

- with the heartbeat, the first tick's claim on the job's batches and its item leases are fresh: the
  second leaves the job to it (``busy``), and the first finishes its three chunks alone;
- a first tick stalled past its lease without a beat (the process paused) has its claim taken by the
  second, which goes on with its chunks; the first, resumed, is fenced before it sends anything
  (``BatchTakenOver``): it never makes a second batch for the chunk it was uploading.

Either way, ticked on until done: one batch per chunk and every request answered once (the
simulator's counts), every item drafted.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

from prelabel.batch.tick import tick_job
from prelabel.config import EngineSettings, JobSpec
from prelabel.llm.client import make_client
from prelabel.llm.endpoint import Endpoint
from prelabel.llm.engine import LLMEngine
from prelabel.queue.submit import submit
from prelabel.simulator import SimConfig, Simulator
from prelabel.simulator.batches import BatchConfig
from prelabel.store import open_store
from prelabel.tasks import build_task
from tests.integration.test_batch_run import batch_job
from tests.integration import test_store_contract as contract

LEASE_S = 300.0
pg_database, url = contract.pg_database, contract.url  # the contract suite's fixtures: both backends

SETTINGS = EngineSettings(lease_s=LEASE_S, heartbeat_s=LEASE_S / 3)
N, PER_FILE = 60, 20  # three input files in the first tick


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def simulator_thread():
    """The simulator on a loop of its own: a tick run from inside another's checkpoint still gets answers."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sim = Simulator(SimConfig(latency_s=0, batch=BatchConfig()))
    base = asyncio.run_coroutine_threadsafe(sim.start(), loop).result(10)
    try:
        yield sim, base
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def one_tick(store_url: str, base: str, job_id: str, owner: str, clock: Clock, checkpoint=None):
    store = open_store(store_url)
    try:
        job = store.get_job(job_id)
        spec = JobSpec.model_validate(job.spec)
        endpoint = Endpoint("sk-test", base, override=True)
        client = make_client(spec.model, api_key="sk-test", base_url=base)
        try:
            engine = LLMEngine(client, spec.model, SETTINGS, store.cache_get, identity=endpoint.identity(spec))
            return await tick_job(store, job, spec, build_task(spec), engine, client, SETTINGS, owner, checkpoint,
                                  clock=clock)
        finally:
            await client.close()
    finally:
        store.close()


def in_thread(coroutine_factory):
    """Run a tick to its end on a loop and thread of its own (the first tick's loop is stopped in its hook)."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", asyncio.run(coroutine_factory())))
    thread.start()
    thread.join(60)
    assert "result" in box, "the second tick did not finish"
    return box["result"]


def finish(store_url, base, job_id, clock) -> int:
    ticks = 0
    while True:
        ticks += 1
        assert ticks < 10
        clock.now += 1
        tick = asyncio.run(one_tick(store_url, base, job_id, "host-c:3:c", clock))
        assert tick.busy is None
        if not tick.waiting:
            return ticks


def check_nothing_paid_twice(store_url: str, sim, job_id: str) -> None:
    store = open_store(store_url)
    try:
        chunks = store.batch_chunks(job_id)
        assert store.counts(job_id) == {"done": N}
        assert all(c.stage == "collected" for c in chunks)
        assert sim.batches.stats.batches_created == len(chunks) == len({c.batch_id for c in chunks})
        assert max(sim.batches.stats.by_custom_id.values()) == 1 and len(sim.batches.stats.by_custom_id) == N
    finally:
        store.close()


def submitted(store_url: str, tmp_path: Path) -> str:
    store = open_store(store_url)
    try:
        return submit(store, batch_job(tmp_path / "job", N, per_file=PER_FILE)).job_id
    finally:
        store.close()


def test_a_slow_ticks_heartbeat_keeps_its_chunks_from_a_second_tick(url: str, tmp_path: Path):
    clock = Clock()
    job_id = submitted(url, tmp_path)
    seen = {}
    with simulator_thread() as (sim, base):
        def checkpoint(step: str) -> None:
            if step != "intent":
                return
            clock.now += 0.6 * LEASE_S  # this file took 3 minutes to write
            seen["files"] = seen.get("files", 0) + 1
            if seen["files"] != 3:
                return
            watcher = open_store(url)
            try:  # 1.8 leases into the tick: nothing it holds has expired, and `status` lists it
                assert job_id not in watcher.runnable_jobs(clock())
                assert "host-a:1:a" in {w.worker for w in watcher.live_workers(SETTINGS.share_stale_s)}
            finally:
                watcher.close()
            seen["second"] = in_thread(lambda: one_tick(url, base, job_id, "host-b:2:b", clock))

        first = asyncio.run(one_tick(url, base, job_id, "host-a:1:a", clock, checkpoint))
        assert seen["second"].busy == "host-a:1:a" and not seen["second"].report.submitted  # left to the first
        assert first.busy is None and len(first.report.submitted) == 3
        finish(url, base, job_id, clock)
        check_nothing_paid_twice(url, sim, job_id)


def test_a_tick_stalled_past_its_lease_is_fenced_before_it_sends_again(url: str, tmp_path: Path):
    clock = Clock()
    job_id = submitted(url, tmp_path)
    seen = {}
    with simulator_thread() as (sim, base):
        def checkpoint(step: str) -> None:
            if step != "intent":
                return
            seen["files"] = seen.get("files", 0) + 1
            if seen["files"] != 2:
                return
            clock.now += 2 * LEASE_S  # stalled (SIGSTOP, a VM paused) without a beat
            seen["second"] = in_thread(lambda: one_tick(url, base, job_id, "host-b:2:b", clock))

        first = asyncio.run(one_tick(url, base, job_id, "host-a:1:a", clock, checkpoint))
        second = seen["second"]
        assert second.busy is None and second.report.submitted  # it took the job's batches over
        assert first.busy is not None  # fenced: it sent nothing more, and left the job
        finish(url, base, job_id, clock)
        check_nothing_paid_twice(url, sim, job_id)


def test_a_ticks_live_requests_are_gated_by_its_claim_and_hold_their_budget_as_long_as_its_leases():
    """A tick taken over (stalled past its claim) sends no more live re-asks: its successor sends
    them, so sending them here too would pay twice. And its live budget holds last as long as its
    item leases, as its heartbeat renews only its claim (a reviewer's findings at merge)."""
    from prelabel.batch.executor import tick_gate, tick_live_settings
    from prelabel.errors import BatchTakenOver, LeaseLost

    beats = []

    def beat() -> None:
        beats.append(1)
        if len(beats) > 1:
            raise BatchTakenOver("job j: another tick took it over")

    gate = tick_gate(beat)
    asyncio.run(gate(None))  # still ours: the request goes
    try:
        asyncio.run(gate(None))
    except LeaseLost as e:
        assert "took it over" in str(e)
    else:
        raise AssertionError("a tick taken over sent a live request")
    settings = tick_live_settings(SETTINGS, 8 * 24 * 3600.0)
    assert settings.lease_s == 8 * 24 * 3600.0 and settings.heartbeat_s == SETTINGS.heartbeat_s
    assert SETTINGS.lease_s == LEASE_S  # the tick's own settings are left as they were
