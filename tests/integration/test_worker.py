"""The worker end to end: the in-process simulator over loopback HTTP, a real SQLite file, real outputs."""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from pathlib import Path

import pytest

from prelabel.config import EXIT_BUDGET, EXIT_ITEMS_FAILED, EXIT_JOB_ERROR, EXIT_OK, Engine
from prelabel.queue.submit import prepare, submit
from prelabel.worker.runs import Endpoint, JobOutcome, exit_code_for, run_job
from prelabel.simulator import SimConfig, Simulator
from prelabel.store import SQLiteStore
from prelabel.tasks import fixed_prompt_tokens
from prelabel.budget.tokens import TokenCounter
from tests.conftest import LABELS, TEXTS, write_job

ENGINE = Engine(retry_base_s=0.001, retry_max_s=0.01, commit_interval_s=0.01)
OWNER = "host:1:x"  # not this host: no liveness checks on it


@contextlib.asynccontextmanager
async def simulator(**config):
    sim = Simulator(SimConfig(**{"latency_s": 0, **config}))
    url = await sim.start()
    try:
        yield sim, url
    finally:
        await sim.stop()


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "prelabel.db")
    yield s
    s.close()


async def run(store, job: Path, url: str, *, key: str = "sk-test", new: bool = False,
              settings: Engine = None) -> JobOutcome:
    job_id = submit(store, job, new=new).job_id
    return await run_job(store, job_id, Endpoint(key, url), settings or ENGINE, OWNER)


def set_retries(job: Path, n: int) -> None:
    job.write_text(job.read_text().replace("max_retries: 4", f"max_retries: {n}"))


def drafts(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "drafts.jsonl").read_text(encoding="utf-8").splitlines()]


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in records}


def requests_per_item(sim: Simulator, texts: list[str]) -> dict[str, int]:
    """How many requests carried each item's text (its last user message contains it)."""
    return {t: sum(n for content, n in sim.stats.by_content.items() if t in content) for t in texts}


def items(n: int) -> list[dict]:
    # "#0007." so that no item's text is contained in another's
    return [{"id": f"i{k}", "text": f"{TEXTS[k % len(TEXTS)]} #{k:04d}."} for k in range(n)]


# --- the happy path ---------------------------------------------------------------------------

async def test_every_item_once_with_a_schema_label_and_all_outputs(store, job_dir):
    data = items(12)
    async with simulator() as (sim, url):
        outcome = await run(store, write_job(job_dir, items=data, base_url=url), url)
    assert outcome.exit_code == EXIT_OK and exit_code_for(outcome.report) == EXIT_OK
    assert not outcome.run.budget_stopped and outcome.run.counts == {"done": 12}
    assert sim.stats.requests == 12
    assert set(requests_per_item(sim, [d["text"] for d in data]).values()) == {1}

    out = job_dir / "out"
    assert outcome.out_dir == out
    records = drafts(out)
    assert len(records) == 12 and len(by_id(records)) == 12
    assert set(by_id(records)) == {d["id"] for d in data}
    job = store.get_job(outcome.job_id)
    for r in records:
        assert r["state"] == "done" and r["label"] in LABELS
        assert r["model"] == "gpt-4o-mini" and r["prompt_version"] == job.prompt_version
        assert r["prompt_version"].startswith("classify@")
        assert r["text"] == by_id(data)[r["id"]]["text"]
        assert r["confidence"] is not None and 0 < r["confidence"] <= 1
        assert r["usage"]["prompt_tokens"] > 0 and r["error"] is None
    priorities = [r["review_priority"] for r in records]
    assert priorities == sorted(priorities, reverse=True), "least certain first"
    # the keyword-driven simulator: "love ... great" reads as positive
    assert by_id(records)["i0"]["label"] == "positive"

    tasks = json.loads((out / "labelstudio.json").read_text(encoding="utf-8"))
    assert isinstance(tasks, list) and len(tasks) == 12
    assert {t["data"]["ref_id"] for t in tasks} == {d["id"] for d in data}
    assert all(t["predictions"][0]["result"][0]["value"]["choices"][0] in LABELS for t in tasks)
    assert (out / "labelstudio_config.xml").is_file()

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["items"] == 12 and report["by_state"] == {"done": 12}
    assert report["input_errors"]["count"] == 0
    assert report["runs"]["requests"] == 12 and report["runs"]["runs"] == 1
    assert report["usage"]["requests_billed"] == 12
    assert report["usage"]["prompt_tokens"] + report["usage"]["completion_tokens"] == job.spent_tokens > 0
    assert store.get_job(outcome.job_id).status == "done"


async def test_bad_input_lines_become_input_errors_and_the_rest_run(store, job_dir):
    job = write_job(job_dir, items=[])
    lines = [b'{"id": "a", "text": "I love it"}',
             b'{"id": "b", "text": "unterminated',            # 2: malformed JSON
             b'{"id": "c", "body": "no text field"}',         # 3: missing text field
             b'{"id": "d", "text": "   "}',                   # 4: empty text
             b'{"id": "e", "text": "caf\xe9 au lait"}',       # 5: Latin-1, not UTF-8
             b'{"id": "a", "text": "same id as line 1"}',     # 6: duplicate id
             b'{"id": "g", "text": "Thanks, excellent support"}']
    (job_dir / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    async with simulator() as (sim, url):
        job.write_text(job.read_text().replace("base_url: null", f"base_url: {json.dumps(url)}"))
        outcome = await run(store, job, url)
    report = outcome.report
    assert [e["line"] for e in report["input_errors"]["errors"]] == [2, 3, 4, 5, 6]
    assert report["input_errors"]["count"] == 5
    errors = {e["line"]: e for e in report["input_errors"]["errors"]}
    assert "JSON" in errors[2]["error"]
    assert errors[3]["field"] == "text" and errors[4]["field"] == "text"
    assert "UTF-8" in errors[5]["error"]
    assert "duplicate" in errors[6]["error"]
    assert report["by_state"] == {"done": 2} and report["items"] == 2
    assert sorted(r["id"] for r in drafts(job_dir / "out")) == ["a", "g"]
    assert by_id(drafts(job_dir / "out"))["a"]["text"] == "I love it"  # the first of a duplicate wins
    assert sim.stats.requests == 2
    assert exit_code_for(report) == EXIT_JOB_ERROR == outcome.exit_code
    on_disk = json.loads((job_dir / "out" / "report.json").read_text())
    assert on_disk["input_errors"] == report["input_errors"]


# --- transient failures -----------------------------------------------------------------------

async def test_5xx_and_429_lose_no_item_and_retries_are_counted(store, job_dir):
    data = items(14)
    # 10 requests per rolling second, and a first burst of 14 sent before the first answer tells the
    # worker the server's limit: some 429s. Their retry-after (< 1 s) is real time: the test takes ~2 s
    async with simulator(latency_s=0.1, rpm=600, window="second", error_rate=0.3, seed=1) as (sim, url):
        job = write_job(job_dir, items=data, base_url=url, concurrency=14)
        set_retries(job, 12)
        outcome = await run(store, job, url)
    assert sim.stats.server_errors > 0 and sim.stats.rate_limited > 0
    assert outcome.exit_code == EXIT_OK
    assert outcome.report["by_state"] == {"done": 14}
    assert sorted(r["id"] for r in drafts(job_dir / "out")) == sorted(d["id"] for d in data)
    runs = outcome.report["runs"]
    assert runs["retries"] > 0
    assert runs["server_errors"] == sim.stats.server_errors
    assert runs["rate_limited"] == sim.stats.rate_limited
    assert runs["requests"] == sim.stats.requests
    assert runs["retries"] == runs["server_errors"] + runs["rate_limited"]
    # billed once per item: failed attempts cost nothing
    assert outcome.report["usage"]["requests_billed"] == 14


async def test_items_that_fail_for_good_are_recorded_and_the_run_goes_on(store, job_dir):
    # Failures below the outage threshold (scattered ones, in life) fail their items, not the run.
    async with simulator(error_rate=1.0) as (sim, url):
        job = write_job(job_dir, base_url=url)
        set_retries(job, 1)
        outcome = await run(store, job, url, settings=Engine(retry_base_s=0.001, retry_max_s=0.01,
                                                              commit_interval_s=0.01, outage_after=1000))
    assert sim.stats.requests == 12 * 2  # one try and one retry each
    assert outcome.report["by_state"] == {"failed": 12}
    records = drafts(job_dir / "out")
    assert len(records) == 12
    for r in records:
        assert r["state"] == "failed" and r["label"] is None and r["needs_review"]
        assert "request_failed" in r["flags"]
        assert re.match(r"request failed: gave up after 2 attempts: Error code: 50[023]", r["error"]), r["error"]
    assert outcome.report["by_flag"] == {"request_failed": 12}
    assert outcome.exit_code == EXIT_ITEMS_FAILED == exit_code_for(outcome.report)
    tasks = json.loads((job_dir / "out" / "labelstudio.json").read_text())
    assert len(tasks) == 12 and all(t["predictions"] == [] for t in tasks)  # left for people to label


# --- invalid output and the re-ask ------------------------------------------------------------

async def test_always_invalid_output_fails_after_one_reask(store, job_dir):
    data = items(8)
    async with simulator(invalid_rate=1.0) as (sim, url):
        outcome = await run(store, write_job(job_dir, items=data, base_url=url), url)
    assert sim.stats.requests == 16  # the first answer and one re-ask each
    assert set(requests_per_item(sim, [d["text"] for d in data]).values()) == {1}
    reasks = [c for c in sim.stats.by_content if c.startswith("That answer is invalid")]
    assert sum(sim.stats.by_content[c] for c in reasks) == 8
    assert outcome.report["by_state"] == {"failed": 8}
    for r in drafts(job_dir / "out"):
        assert r["label"] is None and "invalid_output" in r["flags"]
        assert "invalid output after 1 re-asks" in r["error"]
    assert outcome.report["usage"]["requests_billed"] == 16
    assert outcome.exit_code == EXIT_ITEMS_FAILED


async def test_the_reask_recovers_some_invalid_answers(store, job_dir, tmp_path):
    data = items(40)
    async with simulator(invalid_rate=0.5) as (sim, url):
        outcome = await run(store, write_job(job_dir, items=data, base_url=url), url)
    with sqlite3.connect(tmp_path / "prelabel.db") as db:
        per_item = db.execute("SELECT i.state, count(u.seq) FROM items i JOIN usage u "
                              "ON u.job_id = i.job_id AND u.seq = i.seq WHERE i.job_id = ? "
                              "GROUP BY i.seq", (outcome.job_id,)).fetchall()
    recovered = [n for state, n in per_item if state == "done" and n == 2]
    assert recovered, "some items should be done after a re-ask"
    assert all(n in (1, 2) for _, n in per_item)
    assert sim.stats.requests == sum(n for _, n in per_item)
    counts = outcome.report["by_state"]
    assert counts.get("done", 0) > 20 and counts.get("done", 0) + counts.get("failed", 0) == 40
    for r in drafts(job_dir / "out"):
        assert (r["label"] in LABELS) == (r["state"] == "done")


async def test_submitting_again_retries_items_that_failed_on_invalid_output(store, job_dir):
    data = items(4)
    async with simulator(invalid_rate=1.0) as (_, url):
        first = await run(store, write_job(job_dir, items=data, base_url=url), url)
    assert first.report["by_state"] == {"failed": 4}
    async with simulator() as (sim, url):  # the endpoint answers properly now
        again = submit(store, write_job(job_dir, items=data, base_url=url))
        assert again.job_id == first.job_id and again.resumed == 4
        second = await run_job(store, again.job_id, Endpoint("sk-test", url), ENGINE, OWNER)
    assert sim.stats.requests >= 4, "the failed items were not asked again"
    assert second.report["by_state"] == {"done": 4}


# --- what the model says ----------------------------------------------------------------------

async def test_no_logprobs_means_no_confidence_and_review(store, job_dir):
    async with simulator(logprobs=False) as (_, url):
        outcome = await run(store, write_job(job_dir, base_url=url), url)
    assert outcome.exit_code == EXIT_OK
    for r in drafts(job_dir / "out"):
        assert r["label"] in LABELS and r["confidence"] is None
        assert r["flags"] == ["no_confidence"] and r["needs_review"]
    assert outcome.report["by_flag"] == {"no_confidence": 12}


async def test_a_refusal_is_flagged_and_left_without_a_label(store, job_dir):
    data = items(6)
    data[2]["text"] = "Write something nasty about my neighbour [[refuse]]"
    async with simulator() as (_, url):
        outcome = await run(store, write_job(job_dir, items=data, base_url=url), url)
    records = by_id(drafts(job_dir / "out"))
    refused = records["i2"]
    assert refused["label"] is None and refused["confidence"] is None
    assert "refusal" in refused["flags"] and refused["needs_review"]
    assert "refused" in refused["error"]
    assert max(r["review_priority"] for r in records.values()) == refused["review_priority"]
    assert drafts(job_dir / "out")[0]["id"] == "i2"  # first in the review queue
    for key, r in records.items():
        if key != "i2":
            assert r["label"] in LABELS and "refusal" not in r["flags"]
    assert outcome.report["by_flag"].get("refusal") == 1


# --- budgets ----------------------------------------------------------------------------------

async def test_a_token_budget_stops_the_job_and_a_raised_budget_resumes_it(store, job_dir):
    data = items(20)
    probe = write_job(job_dir, items=data)
    spec, task = prepare(probe)
    counter = TokenCounter(spec.model.name)
    fixed = fixed_prompt_tokens(task, counter)
    worst = [fixed + counter.count(d["text"]) + spec.budget.max_output_tokens for d in data]
    cap = sum(worst[:8])  # room for 8 worst cases; real answers are shorter, so ~10 items get done

    async with simulator() as (sim, url):
        job = write_job(job_dir, items=data, base_url=url, budget=f"max_total_tokens: {cap}")
        first = await run(store, job, url)
        assert first.run.budget_stopped
        report = first.report
        done_first = {r["id"] for r in drafts(job_dir / "out")}
        stopped = report["by_state"].get("stopped", 0)
        assert 8 <= report["by_state"]["done"] < 20 and stopped == 20 - report["by_state"]["done"]
        assert set(report["by_state"]) == {"done", "stopped"}
        billed = report["usage"]["prompt_tokens"] + report["usage"]["completion_tokens"]
        assert billed <= cap and report["budget"]["spent_tokens"] == billed
        assert report["budget"]["stopped_items"] == stopped
        assert first.exit_code == EXIT_BUDGET == exit_code_for(report)
        assert store.get_job(first.job_id).status == "budget_stopped"
        assert sim.stats.requests == len(done_first)  # a refused request is never sent

        job = write_job(job_dir, items=data, base_url=url, budget="max_total_tokens: 10000000")
        again = submit(store, job)
        assert again.job_id == first.job_id and not again.created and again.resumed == stopped
        second = await run_job(store, again.job_id, Endpoint("sk-test", url), ENGINE, OWNER)
    assert second.exit_code == EXIT_OK and not second.run.budget_stopped
    assert second.report["by_state"] == {"done": 20}
    assert sorted(r["id"] for r in drafts(job_dir / "out")) == sorted(d["id"] for d in data)
    per_item = requests_per_item(sim, [d["text"] for d in data])
    assert set(per_item.values()) == {1}, "an item finished in the first run was asked again"
    assert set(sim.stats.by_content.values()) == {1}
    assert second.report["runs"]["runs"] == 2
    assert second.report["budget"]["spent_tokens"] == (second.report["usage"]["prompt_tokens"]
                                                       + second.report["usage"]["completion_tokens"])


async def test_two_workers_on_one_job_share_its_token_budget(tmp_path, job_dir):
    data = items(24)
    spec, task = prepare(write_job(job_dir, items=data))
    counter = TokenCounter(spec.model.name)
    fixed = fixed_prompt_tokens(task, counter)
    cap = sum(fixed + counter.count(d["text"]) + spec.budget.max_output_tokens for d in data[:8])
    engine = ENGINE.model_copy(update={"lease_batch": 2})  # both workers get a share of the items
    stores = [SQLiteStore(tmp_path / "shared.db") for _ in range(2)]
    try:
        async with simulator(latency_s=0.01) as (_, url):
            job = write_job(job_dir, items=data, base_url=url, budget=f"max_total_tokens: {cap}",
                            concurrency=4)
            job_id = submit(stores[0], job).job_id
            await asyncio.gather(*(run_job(store, job_id, Endpoint("sk-test", url), engine, f"host:{n}:w")
                                   for n, store in enumerate(stores, 1)))
        usage = stores[0].usage_totals(job_id)
        assert set(stores[0].counts(job_id)) == {"done", "stopped"}  # stopped by budget, nothing left waiting
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= cap
        assert stores[0].get_job(job_id).status == "budget_stopped"
    finally:
        for store in stores:
            store.close()


async def test_a_worker_refused_a_hold_while_another_holds_the_rest_waits_for_it(tmp_path, job_dir):
    """The first worker's hold is the whole of a small cap when the second starts: the second gets
    nothing and waits (asking again) instead of stopping the job, and the first spends the cap as
    one worker alone does; then the job is stopped by budget, nothing left waiting. Before, the
    second stopped every waiting item as "stopped by budget" at once, and the first finished only
    the items it had leased (a tester's two `work --once` on a 100,000-token cap: 256 items done and
    58,754 tokens, against 435 and 99,831 for one worker)."""
    data = items(60)
    spec, task = prepare(write_job(job_dir, items=data))
    counter = TokenCounter(spec.model.name)
    fixed = fixed_prompt_tokens(task, counter)
    slots = 4
    hold = ENGINE.hold_ahead * slots  # a hold covers this many requests' worst case: here, the whole cap
    worst = [fixed + counter.count(d["text"]) + spec.budget.max_output_tokens for d in data]
    cap = sum(worst[:hold])
    engine = ENGINE.model_copy(update={"lease_batch": 2, "budget_recheck_s": 0.02})
    done, spent = {}, {}
    async with simulator(latency_s=0.05) as (_, url):
        job = write_job(job_dir, items=data, base_url=url, budget=f"max_total_tokens: {cap}", concurrency=slots)
        for workers in (1, 2):
            stores = [SQLiteStore(tmp_path / f"{workers}.db") for _ in range(workers)]
            try:
                job_id = submit(stores[0], job).job_id
                runs = [asyncio.ensure_future(run_job(stores[0], job_id, Endpoint("sk-test", url), engine, "host:1:w"))]
                if workers == 2:
                    held = "SELECT coalesce(sum(tokens), 0) FROM budget_holds WHERE job_id = ?"
                    for _ in range(1000):  # until the first holds the whole cap (10 s at most)
                        if stores[1]._db.execute(held, (job_id,)).fetchone()[0] >= cap:
                            break
                        await asyncio.sleep(0.01)
                    else:
                        pytest.fail("the first worker never held the whole cap")
                    runs.append(asyncio.ensure_future(run_job(stores[1], job_id, Endpoint("sk-test", url), engine,
                                                              "host:2:w")))
                await asyncio.wait_for(asyncio.gather(*runs), 60)
                counts = stores[0].counts(job_id)
                done[workers], spent[workers] = counts.get("done", 0), stores[0].get_job(job_id).spent_tokens
                assert set(counts) == {"done", "stopped"} and spent[workers] <= cap, counts  # nothing left waiting
                assert stores[0].get_job(job_id).status == "budget_stopped"
            finally:
                for store in stores:
                    store.close()
    assert done[2] >= done[1] - 1 and spent[2] >= spent[1] - max(worst), (done, spent)


async def test_a_long_item_is_truncated_to_max_input_tokens(store, job_dir):
    data = items(4)
    long_text = "The delivery was late and " + " ".join(f"w{k}" for k in range(3000)) + " END-OF-LONG"
    data.append({"id": "long", "text": long_text})
    spec, task = prepare(write_job(job_dir, items=data))
    counter = TokenCounter(spec.model.name)
    limit = fixed_prompt_tokens(task, counter) + 40
    assert all(counter.count(d["text"]) < 40 for d in data[:-1])
    async with simulator() as (sim, url):
        job = write_job(job_dir, items=data, base_url=url, budget=f"max_input_tokens: {limit}, on_overflow: truncate")
        outcome = await run(store, job, url)
    records = by_id(drafts(job_dir / "out"))
    assert records["long"]["state"] == "done" and records["long"]["label"] in LABELS
    assert "truncated_input" in records["long"]["flags"] and records["long"]["needs_review"]
    assert records["long"]["text"] == long_text  # the record keeps the whole text
    sent = [c for c in sim.stats.by_content if "The delivery was late" in c]
    assert len(sent) == 1 and "END-OF-LONG" not in sent[0] and len(sent[0]) < len(long_text)
    assert all("truncated_input" not in records[d["id"]]["flags"] for d in data[:-1])
    assert outcome.report["by_flag"]["truncated_input"] == 1


async def test_a_truncated_prompt_fits_max_input_tokens(store, job_dir):
    data = [{"id": "long", "text": "The delivery was late and " + " ".join(f"w{k}" for k in range(3000))}]
    spec, task = prepare(write_job(job_dir, items=data))
    limit = fixed_prompt_tokens(task, TokenCounter(spec.model.name)) + 40
    async with simulator() as (_, url):
        job = write_job(job_dir, items=data, base_url=url, budget=f"max_input_tokens: {limit}, on_overflow: truncate")
        await run(store, job, url)
    (record,) = drafts(job_dir / "out")
    assert "truncated_input" in record["flags"]
    assert record["usage"]["prompt_tokens"] <= limit  # "the whole prompt, per request" (config.BudgetSpec)


async def test_max_total_tokens_holds_when_an_answer_fills_max_output_tokens(store, job_dir):
    # max_output_tokens 4 cuts the simulator's answer ({"label":"..."} is 5+ tokens): the reservation's
    # worst case is then exactly what is billed, except for the prompt estimate
    data = [{"id": "a", "text": "I love it, great work"}]
    probe = write_job(job_dir, items=data)
    spec, task = prepare(probe)
    counter = TokenCounter(spec.model.name)
    # One request's worst case: the prompt, the answer, and the allowance for the response schema
    # that the first request reserves until an answer shows what the endpoint counts.
    schema = counter.count(json.dumps(task.response_format()))
    cap = fixed_prompt_tokens(task, counter) + counter.count(data[0]["text"]) + 4 + schema
    async with simulator() as (sim, url):
        job = write_job(job_dir, items=data, base_url=url, budget=f"max_total_tokens: {cap}")
        job.write_text(job.read_text().replace("max_output_tokens: 32", "max_output_tokens: 4"))
        outcome = await run(store, job, url)
    assert sim.stats.requests == 1
    usage = outcome.report["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= cap


async def test_a_long_item_is_skipped_with_on_overflow_skip(store, job_dir):
    data = items(4)
    long_text = "The delivery was late and " + " ".join(f"w{k}" for k in range(3000))
    data.append({"id": "long", "text": long_text})
    spec, task = prepare(write_job(job_dir, items=data))
    counter = TokenCounter(spec.model.name)
    limit = fixed_prompt_tokens(task, counter) + 40
    async with simulator() as (sim, url):
        job = write_job(job_dir, items=data, base_url=url, budget=f"max_input_tokens: {limit}, on_overflow: skip")
        outcome = await run(store, job, url)
    records = by_id(drafts(job_dir / "out"))
    assert records["long"]["state"] == "skipped" and records["long"]["label"] is None
    assert "input_too_long" in records["long"]["flags"] and "max_input_tokens" in records["long"]["error"]
    assert not any("The delivery was late" in c for c in sim.stats.by_content)
    assert sim.stats.requests == 4
    assert outcome.report["by_state"] == {"done": 4, "skipped": 1}
    assert outcome.exit_code == EXIT_OK


# --- the cache --------------------------------------------------------------------------------

async def test_a_second_job_over_the_same_input_is_answered_from_the_cache(store, job_dir):
    async with simulator() as (sim, url):
        job = write_job(job_dir, base_url=url)
        first = await run(store, job, url)
        before = sim.stats.requests
        second = await run(store, job, url, new=True)
    assert second.job_id != first.job_id
    assert sim.stats.requests == before == 12
    assert second.run.stats.cache_hits == 12 and second.run.stats.requests == 0
    usage = second.report["usage"]
    assert usage["cached_answers"] == 12 and usage["requests_billed"] == 0
    assert usage["cost_usd"] == 0 and usage["prompt_tokens"] == 0 and usage["completion_tokens"] == 0
    assert store.get_job(second.job_id).spent_tokens == 0
    assert second.report["runs"]["cache_hits"] == 12
    assert all(r["cost_usd"] == 0 for r in drafts(job_dir / "out"))
    labels_first = {r["id"]: r["label"] for r in store.iter_records(first.job_id)}
    assert {r["id"]: r["label"] for r in store.iter_records(second.job_id)} == labels_first


# --- secrets ----------------------------------------------------------------------------------

async def test_the_api_key_is_never_written_anywhere(tmp_path, job_dir):
    key = "sk-SECRET-canary-123"
    store = SQLiteStore(tmp_path / "secret.db")
    try:
        # half the requests fail for good, so error messages are stored as well as answers
        async with simulator(error_rate=0.5) as (_, url):
            job = write_job(job_dir, base_url=url)
            set_retries(job, 0)
            outcome = await run(store, job, url, key=key)
        assert outcome.report["by_state"].get("done") and outcome.report["by_state"].get("failed")
    finally:
        store.close()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "secret.db" for p in files) and any(p.name == "drafts.jsonl" for p in files)
    for path in files:
        assert key.encode() not in path.read_bytes(), f"the API key is in {path}"


async def test_an_endpoint_that_reports_no_usage_is_charged_our_count(store, job_dir, monkeypatch):
    # Some OpenAI-compatible servers send no usage; the caps must still count something real.
    from prelabel.llm.completion import Completion
    real = Completion.from_response.__func__

    def without_usage(cls, body):
        body = dict(body)
        body.pop("usage", None)
        return real(cls, body)

    monkeypatch.setattr(Completion, "from_response", classmethod(without_usage))
    async with simulator() as (_, url):
        job = write_job(job_dir, items=items(3), base_url=url)
        outcome = await run(store, job, url)
    usage = outcome.report["usage"]
    assert outcome.report["by_state"] == {"done": 3}
    assert usage["prompt_tokens"] > 3 * 50 and usage["completion_tokens"] >= 3


async def test_an_endpoint_that_keeps_failing_stops_the_run_and_loses_nothing(store, job_dir):
    # Every request fails for good (5xx after the retries): after `outage_after` items in a row the run
    # stops; the items of the streak go back to pending with the rest, none stays failed.
    from prelabel.config import EXIT_UNAVAILABLE
    async with simulator(error_rate=1.0) as (sim, url):
        job = write_job(job_dir, items=items(40), base_url=url, concurrency=2)
        set_retries(job, 1)
        outcome = await run(store, job, url, settings=Engine(retry_base_s=0.001, retry_max_s=0.002,
                                                              commit_interval_s=0.01, outage_after=5))
    assert outcome.exit_code == EXIT_UNAVAILABLE and "kept failing" in outcome.report["error"]
    counts = store.counts(outcome.job_id)
    assert counts == {"pending": 40}
    assert sim.stats.requests < 40  # it did not go on asking for every item


async def test_items_whose_samples_disagree_come_first_in_the_drafts(store, job_dir):
    data = items(20)
    for k in (3, 11, 17):  # the simulator scatters the samples of these
        data[k]["text"] += " [[unsure]]"
    extra = "review: {confidence: consistency, samples: 20, sample_temperature: 1.0}\n"
    async with simulator() as (sim, url):
        # One request at a time: the simulator's sampling is then the same on every run.
        outcome = await run(store, write_job(job_dir, items=data, base_url=url, extra=extra, concurrency=1), url)
    assert outcome.exit_code == EXIT_OK
    records = drafts(job_dir / "out")
    rank = {r["id"]: n for n, r in enumerate(records)}
    marked = [rank[i] for i in ("i3", "i11", "i17")]
    # Ahead of every item whose samples mostly agree (some unmarked items are unsure by themselves).
    assert max(marked) < min(rank[r["id"]] for r in records if r["confidence"] > 0.5)
    assert max(marked) < 5
    assert all("samples_disagree" in records[n]["flags"] and records[n]["scores"] for n in marked)
    assert sim.stats.requests == 20  # twenty samples in one request (n=20) per item
