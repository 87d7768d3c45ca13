"""The live executor's budget reservations on every way a request can end.

A reservation is released when nothing was billed, whatever ended the request: a bug raising out of
the engine, a cancel (SIGTERM and Ctrl-C cancel the run's task), a lapsed hold. A malformed 200 was
answered, so it is billed (what the body reported, else our own count). A run cancelled part-way
bills what was answered once: its items go back to the queue with the answers they paid for, and
their replay from the cache is free.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from aiohttp import web

from prelabel.config import EXIT_BUDGET
from prelabel.queue.submit import submit
from prelabel.worker.runs import Endpoint, run_job
from prelabel.store import SQLiteStore
from tests.conftest import write_job
from tests.integration.test_worker import ENGINE, OWNER, items, simulator

REASK = b"That answer is invalid"


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


def wrap_send(runner, before) -> None:
    """The engine's send with ``before(prepared)`` awaited ahead of it: the fault's seam."""
    real = runner.engine.send

    async def send(prepared, booked_tokens):
        await before(prepared)
        return await real(prepared, booked_tokens)

    runner.engine.send = send


def holds(store, owner: str = OWNER) -> int:
    return store._db.execute("SELECT count(*) FROM budget_holds WHERE owner = ?", (owner,)).fetchone()[0]


async def test_a_bug_raised_by_send_gives_its_reservation_back_and_the_budget_stop_still_comes(store, job_dir):
    """Before: only an LLMError released the reservation, so a bug's stayed in flight and the job,
    out of budget, waited for it for ever instead of stopping."""
    runners = []

    def on_start(runner):
        runners.append(runner)
        calls = []

        async def first_one_breaks(prepared):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug in the engine")

        wrap_send(runner, first_one_breaks)

    async with simulator() as (sim, url):
        job = write_job(job_dir, items=items(20), base_url=url, budget="max_total_tokens: 1200", concurrency=2)
        job_id = submit(store, job).job_id
        outcome = await asyncio.wait_for(
            run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER, on_start=on_start), timeout=30)
    session = runners[0].live.session
    assert session.in_flight == 0
    totals = store.usage_totals(job_id)
    assert session.gate.used_tokens == totals["prompt_tokens"] + totals["completion_tokens"]
    assert outcome.exit_code == EXIT_BUDGET and outcome.run.budget_stopped
    counts = store.counts(job_id)
    assert counts["failed"] == 1 and counts["done"] >= 1 and counts["stopped"] >= 1, counts
    assert holds(store) == 0


async def test_a_cancelled_run_holds_nothing_and_bills_each_answer_once(store, job_dir):
    """SIGTERM mid-run (the CLI cancels the run's task): every item has its first answer (broken,
    so it re-asks) and its re-ask in flight. Nothing stays reserved or held; the answers received
    were paid for and are billed once: now, not again when the next run replays them."""
    n = 4
    runners, stuck = [], []

    def on_start(runner):
        runners.append(runner)

        async def reasks_hang(prepared):
            if REASK in prepared.body:
                stuck.append(1)
                await asyncio.Event().wait()  # in flight until cancelled

        wrap_send(runner, reasks_hang)

    async with simulator(invalid_rate=1.0) as (sim, url):
        job = write_job(job_dir, items=items(n), base_url=url, budget="max_total_tokens: 100000", concurrency=n)
        job_id = submit(store, job).job_id
        run = asyncio.create_task(run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER, on_start=on_start))
        for _ in range(2000):
            if len(stuck) == n:
                break
            await asyncio.sleep(0.005)
        assert len(stuck) == n and sim.stats.ok == n
        run.cancel()  # what SIGTERM does
        with pytest.raises(asyncio.CancelledError):
            await run
        session = runners[0].live.session
        assert session.in_flight == 0 and holds(store) == 0
        assert store.counts(job_id) == {"pending": n}
        assert store.usage_totals(job_id)["requests_billed"] == n  # the first answers, paid for

        outcome = await run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER)
        assert outcome.run.counts == {"failed": n}  # every answer breaks the schema, the re-asks' too
        totals = store.usage_totals(job_id)
        assert sim.stats.ok == 2 * n  # only the re-asks were sent again
        assert totals["requests_billed"] == sim.stats.ok and totals["cached_answers"] == n
        job = store.get_job(job_id)
        assert job.spent_tokens == totals["prompt_tokens"] + totals["completion_tokens"]


async def test_a_lapsed_hold_gives_the_reservation_back(store, job_dir):
    """Paused past its lease while it waited for a request slot: the request is not sent, and its
    reservation is released (the item goes back to the queue)."""
    runners = []

    def on_start(runner):
        runners.append(runner)

        async def lapse(prepared):
            pass

        wrap_send(runner, lapse)
        runner.live._holds_lapsed = lambda: runner.live._holds_until != 0.0  # every hold has lapsed

    async with simulator() as (sim, url):
        job = write_job(job_dir, items=items(3), base_url=url, budget="max_total_tokens: 100000", concurrency=1)
        job_id = submit(store, job).job_id
        await asyncio.wait_for(run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER, on_start=on_start),
                               timeout=30)
        assert sim.stats.requests == 0
    assert runners[0].live.session.in_flight == 0 and holds(store) == 0


# --- a malformed 200 is paid for ---------------------------------------------------------------------

@contextlib.asynccontextmanager
async def malformed_server(body: dict):
    """Every chat request answered 200 with ``body``, which is not a chat completion."""
    hits = []

    async def answer(request):
        hits.append(await request.read())
        return web.json_response(body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1", hits
    finally:
        await runner.cleanup()


async def test_a_malformed_answer_is_billed_what_it_reported(store, job_dir):
    """Before: a 200 whose body was not a completion gave its reservation back unbilled."""
    body = {"object": "chat.completion", "model": "m", "choices": [],
            "usage": {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}}
    async with malformed_server(body) as (url, hits):
        job = write_job(job_dir, items=items(3), base_url=url, concurrency=1)
        job_id = submit(store, job).job_id
        outcome = await run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER)
    assert outcome.run.counts == {"failed": 3}  # each re-asked once (task.max_reasks: 1), then failed
    totals = store.usage_totals(job_id)
    assert len(hits) == 6 and totals["requests_billed"] == 6
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (6 * 40, 6 * 7)
    assert store.get_job(job_id).spent_tokens == 6 * 47
    records = [json.loads(line) for line in (job_dir / "out" / "drafts.jsonl").read_text().splitlines()]
    assert all(r["usage"]["prompt_tokens"] == 80 for r in records)


async def test_a_malformed_answer_without_usage_is_billed_our_estimate(store, job_dir):
    async with malformed_server({"choices": [{"message": "not an object"}]}) as (url, hits):
        job = write_job(job_dir, items=items(2), base_url=url, concurrency=1)
        job_id = submit(store, job).job_id
        await run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER)
    totals = store.usage_totals(job_id)
    assert len(hits) == 4 and totals["requests_billed"] == 4
    assert totals["prompt_tokens"] >= 4 * 50  # the prompt as we count it: the system prompt alone is more
    assert store.get_job(job_id).spent_tokens == totals["prompt_tokens"] + totals["completion_tokens"]


# --- the signals themselves, on a real `prelabel run` ------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_holds_nothing_and_bills_each_answer_once(tmp_path: Path, signum):
    """Every first answer breaks the schema, so each item waits on its re-ask (1 s) with its first
    answer received and nothing committed: the signal lands there. Before: those answers were paid
    for and never billed (the item's commit was lost with the run, the replay is free)."""
    import os
    import signal
    import sqlite3
    import time

    from tests.acceptance.clitools import finish, sim_processes, start
    from tests.faults.test_answer_durability import environ, unique_items, wait_for

    n = 6
    with sim_processes(("--latency-ms", "1000", "--invalid-rate", "1.0", "--as-real")) as (sim,):
        job = write_job(tmp_path / "job", items=unique_items(n), concurrency=8, budget="max_total_tokens: 1000000")
        env = environ(sim, tmp_path)
        run = start("run", job, "-q", env=env)
        try:
            wait_for(lambda: sim.stats()["ok"] >= n)
            time.sleep(0.3)  # well inside the re-asks' 1 s: the first answers have arrived
            assert sim.stats()["ok"] == n, "a re-ask was answered before the signal: the test's timing is off"
            os.kill(run.pid, getattr(signal, signum))
            done = finish(run, timeout=30)
        finally:
            if run.poll() is None:
                run.kill()
        assert done.returncode != 0
        db = Path(env["PRELABEL_DB"])

        def ledger() -> tuple[int, int, int]:
            with sqlite3.connect(db) as conn:
                holds = conn.execute("SELECT count(*) FROM budget_holds WHERE tokens > 0").fetchone()[0]
                billed, cached = conn.execute("SELECT coalesce(sum(1 - cached), 0), coalesce(sum(cached), 0) "
                                              "FROM usage").fetchone()
            return holds, billed, cached

        assert ledger() == (0, n, 0)  # nothing held; the first answers billed, once
        again = finish(start("run", job, "-q", env=env), timeout=60)
        assert again.returncode == 5, again.stderr  # every re-ask is invalid too: the items fail
        # The re-asks in flight at the signal were answered to nobody (the run had let go of them):
        # nothing is known of their usage, and they are not billed (as after a kill -9); sent again now.
        assert sim.stats()["ok"] == 3 * n
        assert ledger() == (0, 2 * n, n)  # each answer received billed once; the first answers replayed free
