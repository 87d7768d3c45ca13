"""Hostile or passing refusals of a capability, and what later runs inherit from them.

A run keeps for later runs only what answers showed: a capability refused and never answered
without is not kept, and a 500 that merely mentions a schema is a passing error, not a refusal.
`prelabel probe` asks the server again and replaces whatever was kept.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.* as the other suites import it

from prelabel.llm.capabilities import JSON_SCHEMA, PROMPT_ONLY, Capabilities, store_key  # noqa: E402
from prelabel.llm.endpoint import normalise_url  # noqa: E402
from prelabel.queue.submit import submit  # noqa: E402
from prelabel.store import SQLiteStore  # noqa: E402
from prelabel.worker.runs import Endpoint, run_job  # noqa: E402
from tests.acceptance.clitools import prelabel, sim_processes  # noqa: E402
from tests.conftest import write_job  # noqa: E402
from tests.integration.test_worker import ENGINE, OWNER, items  # noqa: E402

MODEL = "gpt-4o-mini"


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


def completion() -> dict:
    return {"id": "c", "object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": '{"label": "positive"}'}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}}


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "server_error", "param": None, "code": None}},
                             status=status)


@contextlib.asynccontextmanager
async def server(answer):
    """A chat endpoint answering each request body (parsed) with ``answer(body, count)``."""
    sent: list[dict] = []

    async def handle(request):
        body = json.loads(await request.read())
        sent.append(body)
        return answer(body, len(sent))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1", sent
    finally:
        await runner.cleanup()


def kept(store, url: str) -> Capabilities:
    return Capabilities.from_json(store.cache_get(store_key(normalise_url(url), MODEL)))


async def run(store, job_dir: Path, url: str, n: int = 4):
    job = write_job(job_dir, items=items(n), base_url=url, concurrency=1)
    job.write_text(job.read_text().replace("max_retries: 4", "max_retries: 1"))
    return await run_job(store, submit(store, job).job_id, Endpoint("sk-test", url), ENGINE, OWNER)


async def test_a_refusal_then_an_outage_leaves_later_runs_the_strong_form(store, job_dir):
    """json_schema refused with a 400, then the server goes down: nothing was ever answered in the
    weaker form. Before: the run saved json_object with the schema for every later run."""
    def answer(body, count):
        if body.get("response_format", {}).get("type") == "json_schema":
            return error(400, "response_format json_schema is not supported")
        return error(503, "overloaded")

    async with server(answer) as (url, sent):
        outcome = await run(store, job_dir, url)
    assert outcome.run.counts == {"failed": 4}
    assert any(b["response_format"]["type"] == "json_object" for b in sent)  # this run did send the weaker form
    caps = kept(store, url)
    assert caps.structured == JSON_SCHEMA and caps.learned == []


async def test_a_passing_500_that_mentions_a_schema_is_no_downgrade(store, job_dir):
    """Before: the first 500 whose text said "schema" gave json_schema up, and stored that for good."""
    def answer(body, count):
        if count == 1:
            return error(500, "internal error while compiling the grammar for the schema")
        return web.json_response(completion())

    async with server(answer) as (url, sent):
        outcome = await run(store, job_dir, url)
    assert outcome.run.counts == {"done": 4}
    assert [b["response_format"]["type"] for b in sent] == ["json_schema"] * 5  # the 500 retried as it was
    assert kept(store, url).structured == JSON_SCHEMA and outcome.run.stats.retries == 1


@pytest.mark.slow
def test_probe_replaces_what_earlier_runs_kept(tmp_path: Path):
    """A downgrade kept from an old server (or a bad day) is not for ever: probe asks again."""
    with sim_processes(("--latency-ms", "1"),) as (sim,):
        db = tmp_path / "prelabel.db"
        stale = Capabilities(structured=PROMPT_ONLY, seed=False, learned=["structured: a refusal long ago"])
        store = SQLiteStore(db)
        store.cache_put([(store_key(normalise_url(sim.url), MODEL), stale.to_json())])
        store.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRELABEL_"))}
        env = {**env, "OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-test", "PRELABEL_DB": str(db),
               "XDG_DATA_HOME": str(tmp_path / "xdg")}
        done = prelabel("probe", "--model", MODEL, env=env)
        assert done.returncode == 0, done.stderr
    store = SQLiteStore(db)
    try:
        caps = kept(store, sim.url)
    finally:
        store.close()
    assert caps.structured == JSON_SCHEMA and caps.seed and caps.learned == []


async def test_samples_answered_before_another_failed_are_billed(store, job_dir):
    """``n`` ignored (one choice back), so the other samples go apart; the last is refused for good.
    Before: the two answers received were paid for and never billed."""
    def answer(body, count):
        if count == 3:
            return error(400, "bad request")
        return web.json_response(completion())

    async with server(answer) as (url, sent):
        job = write_job(job_dir, items=items(1), base_url=url, concurrency=1,
                        extra="review: {confidence: consistency, samples: 3}\n")
        job_id = submit(store, job).job_id
        outcome = await run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER)
    assert outcome.run.counts == {"failed": 1} and len(sent) == 3
    assert sent[0]["n"] == 3 and "n" not in sent[1]
    totals = store.usage_totals(job_id)
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (2 * 30, 2 * 5)
    assert store.get_job(job_id).spent_tokens == 2 * 35


async def test_samples_sent_apart_without_usage_bill_a_prompt_each(tmp_path):
    """No usage reported: our own count. Samples sent apart (``n`` ignored) sent the prompt once
    each; before, one prompt was billed for all of them."""
    from prelabel.simulator import SimConfig, Simulator
    from prelabel.simulator.gaps import Gaps

    billed = {}
    for ignore_n in (False, True):
        sim = Simulator(SimConfig(latency_s=0, gaps=Gaps(no_usage=True, ignore_n=ignore_n)))
        url = await sim.start()
        store = SQLiteStore(tmp_path / f"{ignore_n}.db")
        try:
            job = write_job(tmp_path / f"job{ignore_n}", items=items(3), base_url=url, concurrency=1,
                            extra="review: {confidence: consistency, samples: 3}\n")
            job_id = submit(store, job).job_id
            outcome = await run_job(store, job_id, Endpoint("sk-test", url), ENGINE, OWNER)
            assert outcome.run.counts == {"done": 3}
            billed[ignore_n] = store.usage_totals(job_id)["prompt_tokens"]
        finally:
            store.close()
            await sim.stop()
    assert billed[True] == 3 * billed[False] > 0


async def test_samples_sent_apart_teach_no_prompt_slack(tmp_path):
    """The slack an endpoint bills beyond our prompt estimate is learned per request: samples sent
    apart bill the prompt once each, which before was read as slack of twice the prompt (and every
    later reservation held that much more)."""
    from prelabel.simulator import SimConfig, Simulator
    from prelabel.simulator.gaps import Gaps

    slack = {}
    for ignore_n in (False, True):
        sim = Simulator(SimConfig(latency_s=0, gaps=Gaps(ignore_n=ignore_n)))
        url = await sim.start()
        store = SQLiteStore(tmp_path / f"{ignore_n}.db")
        runners = []
        try:
            job = write_job(tmp_path / f"job{ignore_n}", items=items(2), base_url=url, concurrency=1,
                            extra="review: {confidence: consistency, samples: 3}\n")
            await run_job(store, submit(store, job).job_id, Endpoint("sk-test", url), ENGINE, OWNER,
                          on_start=runners.append)
            slack[ignore_n] = runners[0].live.session.prompt_slack
        finally:
            store.close()
            await sim.stop()
    assert slack[True] == slack[False]
