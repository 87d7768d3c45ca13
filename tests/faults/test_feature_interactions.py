"""Where features built side by side meet: a tester's findings after issue 8 landed, each a test.

- A job made by `run --simulate` and left unfinished is not run by a worker with a real endpoint.
- A hand-started simulator's cached answers are not served to a real endpoint that takes its URL.
- A spool file refused for its endpoint or output folder is tried again once the operator allows it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from prelabel.llm import engine as llm
from prelabel.llm.allowlist import AllowList
from prelabel.queue.submit import submit, submit_spool
from prelabel.worker.runs import Endpoint, drain, run_job
from prelabel.store import SQLiteStore
from tests.conftest import write_job
from tests.integration.test_worker import ENGINE, OWNER, drafts, items, simulator


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


async def test_a_simulated_job_left_unfinished_is_not_run_by_a_real_worker(store, tmp_path):
    job = write_job(tmp_path / "job", items=items(6))
    as_simulator = Endpoint("sk-simulator", None, override=True, simulated=True)
    job_id = submit(store, job, endpoint=as_simulator).job_id  # then killed before it ran: all pending
    async with simulator(identify=False) as (real, url):
        outcomes = await drain(store, Endpoint("sk-real", url), ENGINE, OWNER)
        assert real.stats.requests == 0
        assert [(o.job_id, o.exit_code) for o in outcomes] == [(job_id, 0)]
        assert "--simulate" in outcomes[0].note
        assert store.counts(job_id) == {"pending": 6}
    async with simulator() as (sim, url):  # its own command still runs it
        outcome = await run_job(store, job_id, Endpoint("sk-simulator", url, override=True, simulated=True),
                                ENGINE, OWNER)
        assert outcome.exit_code == 0 and store.counts(job_id) == {"done": 6}


async def test_a_hand_started_simulators_answers_are_not_served_to_the_real_endpoint_on_its_url(store, tmp_path):
    async with simulator() as (sim, url):  # `prelabel simulate`: it says what it is in a header
        job = write_job(tmp_path / "job", items=items(5), base_url=url)
        endpoint = Endpoint("sk-test", url)
        await run_job(store, submit(store, job, endpoint=endpoint).job_id, endpoint, ENGINE, OWNER)
        assert sim.stats.requests == 5
        assert {d["simulated"] for d in drafts(tmp_path / "job" / "out")} == {True}

        sim.config = dataclasses.replace(sim.config, identify=False)  # a real server now has the URL
        llm._SAID_SIMULATOR.clear()  # in a new process, as a later `prelabel run` is
        outcome = await run_job(store, submit(store, job, endpoint=endpoint, new=True).job_id, endpoint,
                                ENGINE, OWNER)
        assert sim.stats.requests == 10 and outcome.run.stats.cache_hits == 0
        assert {d["simulated"] for d in drafts(tmp_path / "job" / "out")} == {False}

        # Its answers took the simulator's place in the cache: a third run pays nothing.
        outcome = await run_job(store, submit(store, job, endpoint=endpoint, new=True).job_id, endpoint,
                                ENGINE, OWNER)
        assert sim.stats.requests == 10 and outcome.run.stats.cache_hits == 5


def test_a_refused_spool_file_is_tried_again_once_the_operator_allows_it(store, tmp_path):
    spool = tmp_path / "spool"
    write_job(spool, items=items(3), base_url="http://127.0.0.1:9/v1")
    endpoint = Endpoint("sk-test", None)
    first = submit_spool(store, spool, endpoint, AllowList.of([None], skip_invalid=True))
    assert [e.job_id for e in first] == [None] and "model.base_url" in first[0].error
    assert submit_spool(store, spool, endpoint, AllowList.of([None], skip_invalid=True)) == []  # quiet
    allowed = AllowList.of(["http://127.0.0.1:9/v1"])
    again = submit_spool(store, spool, endpoint, allowed)
    assert len(again) == 1 and again[0].error is None and again[0].job_id is not None

    elsewhere = tmp_path / "spool2"
    write_job(elsewhere, items=items(3), name="t2")  # output.dir: out, beside the job file
    roots = [tmp_path / "outputs"]
    refused = submit_spool(store, elsewhere, endpoint, allowed, roots)
    assert refused[0].job_id is None and "output" in refused[0].error
    assert submit_spool(store, elsewhere, endpoint, allowed, roots) == []
    taken = submit_spool(store, elsewhere, endpoint, allowed, [*roots, elsewhere])
    assert len(taken) == 1 and taken[0].error is None


async def test_an_endpoint_answering_200_with_a_web_page_is_an_outage_not_every_items_fault(store, tmp_path):
    """A wrong base URL that serves HTML (a captive portal, a web server's index) answers every request
    with a 200 that is no answer: after `outage_after` items in a row the run stops, nothing failed."""
    from aiohttp import web

    async def page(request):
        return web.Response(text="<html><body>Welcome</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
    try:
        job = write_job(tmp_path / "job", items=items(30), concurrency=1)
        endpoint = Endpoint("sk-test", url)
        outcome = await run_job(store, submit(store, job, endpoint=endpoint).job_id, endpoint, ENGINE, OWNER)
    finally:
        await runner.cleanup()
    assert outcome.exit_code == 6, outcome.report
    counts = store.counts(outcome.job_id)
    assert counts.get("failed", 0) == 0 and counts.get("pending", 0) == 30, counts
