"""The store's Batch API rules (``prelabel.store.batches``) on both backends, and the in-memory
``MemoryBatchState`` held to the same contract: intent before upload, one collect per chunk (billed
once), budget holds for chunks in flight, failed lines counted per batch."""
from __future__ import annotations

import threading
import uuid

import pytest

from prelabel.batch.reconcile import RemoteBatch, Stage
from prelabel.batch.state import MemoryBatchState
from prelabel.store.batches import ChunkRecord
from prelabel.store import UsageRow, open_store
from tests.integration import test_store_contract as contract
from tests.integration.test_store_contract import job_record, raw_items

pg_database, url, store = contract.pg_database, contract.url, contract.store  # the contract suite's fixtures

T0 = 1_000_000.0


def chunk(name: str = "000000", tokens: int = 1000, cost: float = 0.01, job_id: str = "job-1") -> ChunkRecord:
    return ChunkRecord(job_id, name, Stage.PLANNED, 3, f"/tmp/{name}.jsonl", "/v1/chat/completions", "m", T0,
                       1, tokens, cost)


def batch(status: str = "completed", **counts) -> RemoteBatch:
    return RemoteBatch("batch_1", status, "file_1", 1_000, "job-1", "000000", "out_1", "err_1",
                       counts.get("total", 3), counts.get("completed", 2), counts.get("failed", 1), 90_000)


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def state(request, tmp_path):
    """The store on each backend (as the contract suite's ``url`` makes them), and the in-memory state."""
    if request.param == "memory":
        yield MemoryBatchState()
        return
    schema = None
    if request.param == "sqlite":
        where = str(tmp_path / "prelabel.db")
    else:
        import psycopg
        database = request.getfixturevalue("pg_database")
        schema = f"t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        where = f"{database}?options=-csearch_path%3D{schema}"
    s = open_store(where)
    s.create_job(job_record(), raw_items(3))
    yield s
    s.close()
    if schema is not None:
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_chunk_goes_planned_uploaded_submitted_collected(state):
    assert state.batch_plan(chunk(), ["k1", "k2", "k3"], None, None) == (1000, 0.01)
    (c,) = state.batch_chunks("job-1")
    assert (c.stage, c.requests, c.held_tokens, c.file_id, c.batch_id) == (Stage.PLANNED, 3, 1000, None, None)
    assert sorted(state.batch_chunk_keys("job-1", "000000")) == ["k1", "k2", "k3"]
    assert state.batch_open_keys("job-1") == {"k1", "k2", "k3"}
    state.batch_set_file("job-1", "000000", "file_1")
    assert state.batch_chunks("job-1")[0].stage == Stage.UPLOADED
    state.batch_set_batch("job-1", "000000", batch("in_progress", completed=0, failed=0))
    c = state.batch_chunks("job-1")[0]
    assert (c.stage, c.batch_id, c.status, c.expires, c.total) == (Stage.SUBMITTED, "batch_1", "in_progress", 90_000, 3)
    usage = [UsageRow("m", 10, 2, 0.0005, False), UsageRow("m", 20, 3, 0.001, False)]
    assert state.batch_collect("job-1", "000000", batch(), usage, [("k3", "status 500: boom", True)], T0 + 5)
    c = state.batch_chunks("job-1")[0]
    assert (c.stage, c.status, c.completed, c.failed, c.held_tokens) == (Stage.COLLECTED, "completed", 2, 1, 0)
    assert state.batch_open_keys("job-1") == set()
    (f,) = state.batch_failures("job-1").values()
    assert (f.key, f.attempts, f.error, f.retryable) == ("k3", 1, "status 500: boom", True)
    # a collected chunk is not moved back by a late status
    state.batch_set_batch("job-1", "000000", batch("in_progress"))
    assert state.batch_chunks("job-1")[0].stage == Stage.COLLECTED


def test_a_chunk_is_billed_once_however_often_it_is_collected(state):
    state.batch_plan(chunk(), ["k1"], None, None)
    usage = [UsageRow("m", 10, 2, 0.5, False)]
    assert state.batch_collect("job-1", "000000", batch(), usage, [("k9", "x", True)], T0) is True
    assert state.batch_collect("job-1", "000000", batch(), usage, [("k9", "x", True)], T0) is False
    if isinstance(state, MemoryBatchState):
        assert state.spent["job-1"] == (12, 0.5) and len(state.usage) == 1
    else:
        job = state.get_job("job-1")
        assert (job.spent_tokens, job.spent_cost) == (12, 0.5)
        assert state.usage_totals("job-1")["requests_billed"] == 1
    assert state.batch_failures("job-1")["k9"].attempts == 1


def test_failed_lines_count_one_attempt_per_collected_batch(state):
    for n, name in enumerate(["000000", "000001", "000002"]):
        state.batch_plan(chunk(name), ["k"], None, None)
        state.batch_collect("job-1", name, None, [], [("k", f"try {n}", n < 2)], T0)
    f = state.batch_failures("job-1")["k"]
    assert (f.attempts, f.error, f.retryable) == (3, "try 2", False)


def test_a_chunks_worst_case_is_held_against_the_caps_until_it_is_collected(state):
    assert state.batch_plan(chunk("000000", 600, 0.6), ["a"], 1000, 1.0) == (600, 0.6)
    assert state.batch_plan(chunk("000001", 600, 0.6), ["b"], 1000, 1.0) == (400, pytest.approx(0.4))
    assert state.batch_plan(chunk("000002", 600, 0.6), ["c"], 1000, 1.0) == (0, 0.0)
    state.batch_collect("job-1", "000000", None, [UsageRow("m", 100, 0, 0.1, False)], [], T0)
    # 100 spent, 400 still held by 000001: 500 left
    assert state.batch_plan(chunk("000003", 600, 0.6), ["d"], 1000, 1.0) == (500, pytest.approx(0.5))


def test_threads_collecting_one_chunk_bill_it_once(store):
    store.create_job(job_record(), raw_items(1))
    store.batch_plan(chunk(), ["k1"], None, None)
    won = []

    def go():
        won.append(store.batch_collect("job-1", "000000", batch(), [UsageRow("m", 10, 0, 0.25, False)], [], T0))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False, False, False, True]
    job = store.get_job("job-1")
    assert (job.spent_tokens, job.spent_cost) == (10, 0.25)


def test_what_the_budget_has_used_counts_spending_and_every_hold(state):
    assert state.batch_budget_used("job-1", T0) == (0, 0.0)
    state.batch_plan(chunk(tokens=1000, cost=0.01), ["k1"], None, None)
    assert state.batch_budget_used("job-1", T0) == (1000, pytest.approx(0.01))
    state.batch_set_batch("job-1", "000000", batch("completed"))
    state.batch_collect("job-1", "000000", batch(), [UsageRow("m", 10, 2, 0.0005, False)], [], T0 + 5)
    tokens, cost = state.batch_budget_used("job-1", T0 + 5)
    assert (tokens, cost) == (12, pytest.approx(0.0005))  # the hold settled to what was billed


def test_live_answers_of_a_tick_are_cached_and_billed_in_one_transaction(state):
    if isinstance(state, MemoryBatchState):
        pytest.skip("the store's: answers and the ledger together")
    granted = state.hold_budget("job-1", "tick", 500, 0.01, 10_000, 1.0, T0, 300.0)
    assert granted == (500, 0.01)
    state.batch_live_answers("job-1", "tick", [("key-1", {"content": "x"}), ("live:key-1", {"cost_usd": 0.002})],
                             [(0, UsageRow("m", 100, 20, 0.002, False))])
    assert state.cache_get("key-1") == {"content": "x"} and state.cache_get("live:key-1") == {"cost_usd": 0.002}
    job = state.get_job("job-1")
    assert (job.spent_tokens, job.spent_cost) == (120, pytest.approx(0.002))
    assert state.usage_totals("job-1")["requests_billed"] == 1
    # the hold shrank by what was spent: spent + holds is what was granted, not more
    tokens, cost = state.batch_budget_used("job-1", T0 + 1)
    assert (tokens, cost) == (500, pytest.approx(0.01))
