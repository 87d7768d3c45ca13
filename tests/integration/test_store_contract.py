"""The store contract, once per backend: a real SQLite file (WAL mode) in tmp_path, and a real PostgreSQL
server (127.0.0.1:5432, a database made for the session, a schema per test). State is read only through
the store's interface. Without a server the PostgreSQL half is skipped, except under CI=true, where it fails.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from prelabel.errors import InputError, JobExists, StoreError
from prelabel.job.inputs import RawItem
from prelabel.store import AUGMENT, ItemResult, JobRecord, RunStats, Spawn, SQLiteStore, UsageRow, open_store

PG_SERVER = os.environ.get("PRELABEL_TEST_PG", "postgresql://postgres@127.0.0.1:5432")

OWNER_A, OWNER_B = "host-a:1:aaaaaa", "host-b:2:bbbbbb"
T0 = 1_000_000.0  # a hand-picked "now": leases are tested without a clock


def job_record(job_id: str = "job-1") -> JobRecord:
    spec = {"model": {"name": "m"}, "task": {"kind": "classify"},
            "budget": {"max_total_tokens": None, "max_cost_usd": None}}
    return JobRecord(job_id, "t", spec, "job.yaml", "0" * 64, "classify@abc", "queued", 0.0, 0, 0.0)


def raw_items(n: int, start_line: int = 1) -> list[RawItem]:
    return [RawItem(start_line + i, f"id{i}", f"text {i}") for i in range(n)]


def result(seq: int, *, state: str = "done", priority: float = 0.5, flags: list[str] | None = None,
           usage: list[UsageRow] | None = None, uncache: list | None = None, release: bool = False) -> ItemResult:
    record = {"id": f"id{seq}", "seq": seq, "label": "positive", "flags": flags or [], "review_priority": priority}
    return ItemResult(seq, state, priority, [record], usage or [], release, uncache=uncache or [])


def usage(prompt: int = 10, completion: int = 2, cost: float = 0.001, cached: bool = False) -> UsageRow:
    return UsageRow("m", prompt, completion, cost, cached)


@pytest.fixture(scope="session")
def pg_database():
    """A database of its own for this session (dropped at its end), or a skip where no server runs."""
    try:
        import psycopg
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3)
    except Exception as e:  # psycopg missing, or no server
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER} under CI=true: {e}")
        pytest.skip(f"no PostgreSQL at {PG_SERVER}: {e}")
    name = f"prelabel_contract_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        # A connection of its own: the session's tests include a server restart
        # (tests/faults/test_postgres_restart.py), which ends any connection held across it.
        for attempt in range(30):
            try:
                with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except psycopg.OperationalError:  # the server still starting up again
                time.sleep(1)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path: Path):
    """Where a store lives: a SQLite path, or a PostgreSQL URL whose search_path is a fresh schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "store" / "prelabel.db")
        return
    import psycopg
    database = request.getfixturevalue("pg_database")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    yield f"{database}?options=-csearch_path%3D{schema}"
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store(url: str):
    s = open_store(url)
    yield s
    s.close()


def item_state(store, seq: int, job_id: str = "job-1") -> tuple:
    item = store.item(job_id, seq)
    import json
    return item.state, item.lease_owner, "".join(json.dumps(d) for d in item.drafts) or None


# --- jobs and ingest --------------------------------------------------------------------------

def test_create_job_stores_items_and_input_errors_and_reopens(store, url):
    entries = [RawItem(1, "a", "first"), InputError("malformed JSON", line=2),
               RawItem(3, "b", "second"), InputError("text is empty", line=4, field="text")]
    assert store.create_job(job_record(), entries) == 2
    job = store.get_job("job-1")
    assert job.status == "queued" and job.spent_tokens == 0 and job.spec["model"]["name"] == "m"
    assert job.created_at > 0
    assert store.counts("job-1") == {"pending": 2}
    assert [(e.line, e.field, e.message) for e in store.input_errors("job-1")] == [
        (2, None, "malformed JSON"), (4, "text", "text is empty")]
    assert [j.id for j in store.list_jobs()] == ["job-1"]
    store.close()
    again = open_store(url)  # the file, not the connection, holds it all
    try:
        assert again.counts("job-1") == {"pending": 2}
        assert again.get_job("nope") is None
    finally:
        again.close()


def test_creating_the_same_job_twice_is_refused(store):
    store.create_job(job_record(), raw_items(2))
    with pytest.raises(StoreError):
        store.create_job(job_record(), raw_items(2))


def test_duplicate_ids_become_input_errors_and_the_first_is_kept(store):
    entries = [RawItem(1, "a", "kept"), RawItem(2, "b", "other"), RawItem(3, "a", "dropped")]
    store.create_job(job_record(), entries)
    assert store.counts("job-1") == {"pending": 2}
    errors = store.input_errors("job-1")
    assert [(e.line, e.field) for e in errors] == [(3, None)]
    assert "duplicate id 'a'" in errors[0].message
    texts = {item.item_id: item.text for item in store.lease("job-1", OWNER_A, 10, T0, 60)}
    assert texts == {"a": "kept", "b": "other"}


def test_create_job_returns_the_number_of_items_stored_not_counting_duplicates(store):
    entries = [RawItem(1, "a", "kept"), RawItem(2, "b", "other"), RawItem(3, "a", "dropped")]
    assert store.create_job(job_record(), entries) == 2


def test_many_items_go_in_across_ingest_batches(store):
    n = 12_000  # more than one ingest batch (5000)
    entries = (RawItem(i + 1, str(i), f"t{i}") for i in range(n))
    store.create_job(job_record(), entries)
    assert store.counts("job-1") == {"pending": n}


# --- leases -----------------------------------------------------------------------------------

def test_lease_takes_lowest_seq_first_up_to_the_limit(store):
    store.create_job(job_record(), raw_items(10))
    first = store.lease("job-1", OWNER_A, 4, T0, 60)
    assert [i.seq for i in first] == [0, 1, 2, 3]
    assert (first[0].item_id, first[0].line, first[0].text) == ("id0", 1, "text 0")
    assert store.counts("job-1") == {"pending": 6, "leased": 4}
    assert store.leased_owners() == [OWNER_A]


def test_two_owners_never_get_the_same_item(store):
    store.create_job(job_record(), raw_items(10))
    a = store.lease("job-1", OWNER_A, 6, T0, 60)
    b = store.lease("job-1", OWNER_B, 6, T0, 60)
    assert len(a) == 6 and len(b) == 4
    assert not {i.seq for i in a} & {i.seq for i in b}
    assert store.lease("job-1", OWNER_A, 6, T0, 60) == []
    assert sorted(store.leased_owners()) == sorted([OWNER_A, OWNER_B])


def test_lease_s_is_honoured_and_expired_leases_are_retaken(store, url):
    store.create_job(job_record(), raw_items(3))
    store.lease("job-1", OWNER_A, 3, T0, lease_s=10)
    assert store.lease("job-1", OWNER_B, 3, T0 + 9.9, 60) == []  # still A's
    assert store.runnable_jobs(T0 + 9.9) == []
    assert store.runnable_jobs(T0 + 10.1) == ["job-1"]
    retaken = store.lease("job-1", OWNER_B, 3, T0 + 10.1, 60)
    assert [i.seq for i in retaken] == [0, 1, 2]
    assert item_state(store, 0)[:2] == ("leased", OWNER_B)


def test_renew_extends_only_the_owners_leases(store):
    store.create_job(job_record(), raw_items(4))
    store.lease("job-1", OWNER_A, 2, T0, 10)
    store.lease("job-1", OWNER_B, 2, T0, 10)
    store.renew(OWNER_A, T0 + 5, 10)  # A's now expire at T0 + 15, B's still at T0 + 10
    taken = store.lease("job-1", "host-c:3:cccccc", 4, T0 + 12, 60)
    assert [i.seq for i in taken] == [2, 3]


def test_renew_returns_the_leases_it_renewed(store):
    """A worker paused past its lease learns at its next renew which items it lost: those not returned."""
    store.create_job(job_record(), raw_items(4))
    mine = store.lease("job-1", OWNER_A, 4, T0, 10)
    assert store.renew(OWNER_A, T0 + 5, 10) == {("job-1", i.seq, i.epoch) for i in mine}
    taken = store.lease("job-1", OWNER_B, 2, T0 + 16, 60)  # A paused past T0 + 15: B takes two
    assert store.renew(OWNER_A, T0 + 17, 10) == {("job-1", i.seq, i.epoch) for i in mine[2:]}
    assert {i.seq for i in taken} == {mine[0].seq, mine[1].seq}
    assert store.renew(OWNER_B, T0 + 18, 60) == {("job-1", i.seq, i.epoch) for i in taken}


def test_release_and_reclaim_hand_leases_back(store):
    store.create_job(job_record(), raw_items(6))
    store.lease("job-1", OWNER_A, 3, T0, 60)
    store.lease("job-1", OWNER_B, 3, T0, 60)
    assert store.release(OWNER_A) == 3
    assert store.counts("job-1") == {"pending": 3, "leased": 3}
    assert store.release(OWNER_A) == 0
    assert store.reclaim([OWNER_B, "nobody:9:zzzzzz"]) == 3
    assert store.counts("job-1") == {"pending": 6}
    assert store.leased_owners() == []


# --- results ----------------------------------------------------------------------------------

def test_complete_commits_result_usage_and_cache_together(store, url):
    store.create_job(job_record(), raw_items(3))
    store.lease("job-1", OWNER_A, 3, T0, 60)
    store.cache_put([("k0", {"content": "x"}), ("k1", {"content": "unusable"})])  # as the answers arrived
    store.complete("job-1", OWNER_A, [
        result(0, usage=[usage(100, 5, 0.01)]),
        result(1, state="failed", usage=[usage(50, 0, 0.0)], uncache=["k1"]),
    ])
    state, owner, raw = item_state(store, 0)
    assert (state, owner) == ("done", None) and '"label": "positive"' in raw
    assert store.counts("job-1") == {"done": 1, "failed": 1, "leased": 1}
    assert store.cache_get("k0") == {"content": "x"}
    assert store.cache_get("k1") is None and store.cache_get("k-unknown") is None
    job = store.get_job("job-1")
    assert job.spent_tokens == 155 and job.spent_cost == pytest.approx(0.01)


def test_complete_is_all_or_nothing(store, url):
    store.create_job(job_record(), raw_items(2))
    store.lease("job-1", OWNER_A, 2, T0, 60)
    unserialisable = result(1)
    unserialisable.records[0]["bad"] = {1, 2}  # json.dumps fails half-way through the batch
    store.cache_put([("k0", {"a": 1})])
    with pytest.raises(TypeError):
        store.complete("job-1", OWNER_A, [result(0, usage=[usage()], uncache=["k0"]), unserialisable])
    assert store.counts("job-1") == {"leased": 2}
    assert store.usage_totals("job-1")["requests_billed"] == 0
    assert store.cache_get("k0") == {"a": 1}
    assert store.get_job("job-1").spent_tokens == 0
    store.complete("job-1", OWNER_A, [result(0), result(1)])  # the connection is usable afterwards
    assert store.counts("job-1") == {"done": 2}


def test_a_result_for_a_lost_lease_is_not_applied(store, url):
    store.create_job(job_record(), raw_items(1))
    store.lease("job-1", OWNER_A, 1, T0, lease_s=1)
    store.lease("job-1", OWNER_B, 1, T0 + 2, 60)  # A's lease expired and B took the item
    late = result(0)
    late.records[0]["label"] = "from-A"
    store.complete("job-1", OWNER_A, [late])
    assert item_state(store, 0)[:2] == ("leased", OWNER_B)
    store.complete("job-1", OWNER_B, [result(0)])
    state, owner, raw = item_state(store, 0)
    assert state == "done" and "from-A" not in raw
    # nor after a release: the item went back to pending, A's answer must not finish it
    store.create_job(job_record("job-2"), raw_items(1))
    store.lease("job-2", OWNER_A, 1, T0, 60)
    store.release(OWNER_A)
    store.complete("job-2", OWNER_A, [result(0)])
    assert store.counts("job-2") == {"pending": 1}


def test_a_released_result_goes_back_to_pending(store):
    store.create_job(job_record(), raw_items(2))
    store.lease("job-1", OWNER_A, 2, T0, 60)
    store.complete("job-1", OWNER_A, [result(0), result(1, state="pending", release=True)])
    assert store.counts("job-1") == {"done": 1, "pending": 1}
    assert [i.seq for i in store.lease("job-1", OWNER_B, 5, T0, 60)] == [1]


def test_stop_remaining_and_resume_stopped_and_retry_failed(store):
    store.create_job(job_record(), raw_items(6))
    store.lease("job-1", OWNER_A, 3, T0, 60)
    store.complete("job-1", OWNER_A, [result(0), result(1, state="failed")])  # seq 2 stays leased
    assert store.stop_remaining("job-1") == 3
    assert store.counts("job-1") == {"done": 1, "failed": 1, "leased": 1, "stopped": 3}
    assert store.lease("job-1", OWNER_B, 10, T0, 60) == []  # stopped items are not leased
    assert store.runnable_jobs(T0) == []
    assert store.resume_stopped("job-1") == 3
    assert store.retry_failed("job-1") == 1
    assert store.counts("job-1") == {"done": 1, "leased": 1, "pending": 4}
    assert store.runnable_jobs(T0) == ["job-1"]


# --- reading ----------------------------------------------------------------------------------

def test_counts_flags_and_records_least_certain_first(store):
    store.create_job(job_record(), raw_items(5))
    store.lease("job-1", OWNER_A, 5, T0, 60)
    store.complete("job-1", OWNER_A, [
        result(0, priority=0.1), result(1, priority=2.0, flags=["refusal"]),
        result(2, priority=0.9, flags=["low_confidence"]), result(3, priority=0.9, flags=["low_confidence"]),
    ])
    assert store.counts("job-1") == {"done": 4, "leased": 1}
    assert store.flag_counts("job-1") == {"low_confidence": 2, "refusal": 1}
    records = list(store.iter_records("job-1"))
    assert [r["seq"] for r in records] == [1, 2, 3, 0]  # priority desc, then input order
    assert store.counts("nope") == {} and list(store.iter_records("nope")) == []


def test_iter_records_pages_through_many(store):
    n = 2500  # more than one page (1000)
    store.create_job(job_record(), raw_items(n))
    leased = store.lease("job-1", OWNER_A, n, T0, 60)
    store.complete("job-1", OWNER_A, [result(i.seq, priority=i.seq / n) for i in leased])
    seqs = [r["seq"] for r in store.iter_records("job-1")]
    assert seqs == list(range(n - 1, -1, -1))


def test_drafts_jsonl_is_the_records_as_stored(store, tmp_path):
    import json

    from prelabel.outputs.drafts import write_drafts

    store.create_job(job_record(), raw_items(3))
    leased = store.lease("job-1", OWNER_A, 3, T0, 60)
    store.complete("job-1", OWNER_A, [result(i.seq, priority=i.seq / 3, flags=["café"]) for i in leased])
    raw = list(store.iter_record_json("job-1"))
    assert [json.loads(line) for line in raw] == list(store.iter_records("job-1"))
    assert write_drafts(iter(raw), tmp_path) == 3
    from_dicts = tmp_path / "from_dicts"
    write_drafts(store.iter_records("job-1"), from_dicts)
    # Written as they are, the lines are what serialising the records again would give, byte for byte.
    assert (tmp_path / "drafts.jsonl").read_bytes() == (from_dicts / "drafts.jsonl").read_bytes()


def test_usage_totals_exclude_cached_tokens(store):
    store.create_job(job_record(), raw_items(3))
    store.lease("job-1", OWNER_A, 3, T0, 60)
    store.complete("job-1", OWNER_A, [
        result(0, usage=[usage(100, 10, 0.002), usage(120, 8, 0.003)]),  # a re-ask: two billed requests
        result(1, usage=[usage(100, 10, 0.0, cached=True)]),
        result(2, usage=[usage(90, 9, 0.001)]),
    ])
    none_lost = {"requests": 0, "tokens": 0, "cost_usd": 0}
    assert store.usage_totals("job-1") == {"requests_billed": 3, "cached_answers": 1, "prompt_tokens": 310,
                                           "cached_prompt_tokens": 0, "completion_tokens": 27, "cost_usd": 0.006,
                                           "paid_for_lost_leases": none_lost}
    assert store.get_job("job-1").spent_tokens == 337
    assert store.usage_totals("nope") == {"requests_billed": 0, "cached_answers": 0, "prompt_tokens": 0,
                                          "cached_prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0,
                                          "paid_for_lost_leases": none_lost}


def test_usage_totals_count_provider_cached_prompt_tokens(store):
    """The ledger keeps, per request, the prompt tokens the provider served from its prompt cache;
    an answer from prelabel's own response cache counts none (it was not billed at all)."""
    store.create_job(job_record(), raw_items(2))
    store.lease("job-1", OWNER_A, 2, T0, 60)
    store.complete("job-1", OWNER_A, [
        result(0, usage=[UsageRow("m", 1500, 10, 0.001, False, 1280)]),
        result(1, usage=[UsageRow("m", 1500, 10, 0.0, True, 1280)]),
    ])
    totals = store.usage_totals("job-1")
    assert totals["cached_prompt_tokens"] == 1280 and totals["prompt_tokens"] == 1500


def test_old_usage_table_gains_cached_prompt_tokens(tmp_path):
    """A store made before prompt caching was billed (no cached_prompt_tokens column) is migrated."""
    path = tmp_path / "old.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE usage")
    db.execute("CREATE TABLE usage (job_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, model TEXT NOT NULL, "
               "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost_usd REAL NOT NULL, "
               "cached INTEGER NOT NULL)")
    db.execute("INSERT INTO usage VALUES ('job-1', 0, 0, 'm', 100, 10, 0.001, 0)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        assert store.usage_totals("job-1")["cached_prompt_tokens"] == 0
        assert store.usage_totals("job-1")["prompt_tokens"] == 100
    finally:
        store.close()


def test_runs_are_summed(store):
    store.create_job(job_record(), raw_items(1))
    store.add_run("job-1", OWNER_A, T0, RunStats(requests=5, retries=2, rate_limited=1, server_errors=1,
                                                  timeouts=0, cache_hits=3, wall_s=1.5))
    store.add_run("job-1", OWNER_B, T0, RunStats(requests=1, wall_s=0.5))
    assert store.run_totals("job-1") == {"runs": 2, "requests": 6, "retries": 2, "rate_limited": 1,
                                         "server_errors": 1, "timeouts": 0, "cache_hits": 3, "wall_s": 2.0}


def test_input_errors_are_per_job_and_in_line_order(store):
    store.create_job(job_record(), [InputError("b", line=9), RawItem(1, "a", "x"), InputError("a", line=4)])
    store.create_job(job_record("job-2"), [InputError("other", line=1)])
    assert [e.line for e in store.input_errors("job-1")] == [4, 9]
    assert [e.message for e in store.input_errors("job-2")] == ["other"]


def test_spool_remembers_path_and_content(store):
    assert store.spool_entry("/s/a.yaml", "sha1") is None
    store.spool_record("/s/a.yaml", "sha1", "job-1", None)
    store.spool_record("/s/a.yaml", "sha1", "job-1", None)  # recording twice is harmless
    store.spool_record("/s/b.yaml", "sha9", None, "bad yaml")
    assert store.spool_entry("/s/a.yaml", "sha1") is not None
    assert store.spool_entry("/s/b.yaml", "sha9") is not None
    assert store.spool_entry("/s/a.yaml", "sha2") is None  # changed content: a new submission
    assert store.spool_entry("/s/c.yaml", "sha1") is None


# --- two processes on one file ----------------------------------------------------------------

def _lease_until_empty(path: str, owner: str, start, out) -> None:
    store = open_store(path)
    start.wait(30)
    taken: list[int] = []
    while batch := store.lease("job-1", owner, 3, T0, 600):
        taken += [item.seq for item in batch]
        # finish half of them so writers interleave leases and completions
        store.complete("job-1", owner, [result(item.seq) for item in batch if item.seq % 2 == 0])
        # a worker does something between leases; without a pause SQLite's busy handler (which sleeps
        # and retries) can lose every race to a writer in a tight loop, and one process gets nothing
        time.sleep(0.001)
    store.close()
    out.put((owner, taken))


def test_two_processes_lease_disjoint_sets_that_cover_everything(store, url):
    n = 600
    store.create_job(job_record(), raw_items(n))
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_lease_until_empty, args=(url, owner, start, out))
             for owner in (OWNER_A, OWNER_B)]
    for p in procs:
        p.start()
    start.set()
    taken = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    a, b = set(taken[OWNER_A]), set(taken[OWNER_B])
    assert len(a) == len(taken[OWNER_A]) and len(b) == len(taken[OWNER_B])  # nobody got one twice
    assert not a & b
    assert a | b == set(range(n))
    assert a and b, "both processes should have leased something"
    assert store.counts("job-1") == {"done": n // 2, "leased": n // 2}


def test_a_concurrent_create_of_the_same_job_fails_cleanly(store, url):
    # Two cron ticks submitting one spool file at once: the second create starts while the first one
    # is still reading its input. The loser must fail at once with the store's error, write nothing,
    # and leave the winner's job, which workers do not see until all of it is in.
    other = open_store(url)
    outcome = {}

    def input_that_races():
        items = raw_items(3)
        yield items[0]
        assert store.runnable_jobs(0.0) == []  # half-ingested: not for workers yet
        with pytest.raises(JobExists):
            store.create_job(job_record(), raw_items(3))  # the other tick loses the race
        outcome["loser_raised"] = True
        yield from items[1:]

    try:
        assert other.create_job(job_record(), input_that_races()) == 3
    finally:
        other.close()
    assert outcome["loser_raised"]
    assert store.input_errors("job-1") == []
    assert store.counts("job-1") == {"pending": 3}
    assert store.get_job("job-1").status == "queued" and store.runnable_jobs(0.0) == ["job-1"]


# --- several drafts per item, spawned items, migration ----------------------------------------

def test_an_item_may_finish_with_several_drafts_ordered_by_priority(store):
    store.create_job(job_record(), raw_items(2))
    store.lease("job-1", OWNER_A, 2, T0, 60)
    pairs = ItemResult(0, "done", 0.9, [{"id": "id0#1", "review_priority": 0.2, "flags": []},
                                        {"id": "id0#2", "review_priority": 0.9, "flags": ["x"]}])
    store.complete("job-1", OWNER_A, [pairs, result(1, priority=0.5)])
    assert [r["id"] for r in store.iter_records("job-1")] == ["id0#2", "id1", "id0#1"]
    assert store.flag_counts("job-1") == {"x": 1}


def test_spawned_items_are_made_once_with_the_result_that_made_them(store):
    store.create_job(job_record(), raw_items(2))
    store.lease("job-1", OWNER_A, 2, T0, 60)
    first = result(0)
    first.spawn = [Spawn("id0~1", "text 0", AUGMENT, {"step": 0})]
    store.complete("job-1", OWNER_A, [first])
    again = result(0)  # a stale worker finishing the same item again makes nothing more
    again.spawn = [Spawn("id0~1", "text 0", AUGMENT, {"step": 0})]
    store.complete("job-1", OWNER_B, [again])
    leased = store.lease("job-1", OWNER_A, 10, T0, 60, units=1)
    assert [(i.item_id, i.kind, i.payload) for i in leased] == [("id0~1", AUGMENT, '{"step": 0}')]
    assert store.kind_counts("job-1") == {"label": {"done": 1, "leased": 1}, "augment": {"leased": 1}}
    summary = ItemResult(leased[0].seq, "done", 0.0, [], summary={"step": "noise", "made": 2})
    store.complete("job-1", OWNER_A, [summary])
    assert list(store.unit_results("job-1")) == [{"step": "noise", "made": 2}]
    assert sorted(store.item_texts("job-1")) == ["text 0", "text 1"]


def test_a_store_from_before_drafts_had_their_own_table_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE items (job_id TEXT NOT NULL, seq INTEGER NOT NULL, item_id TEXT NOT NULL,
                line INTEGER NOT NULL, text TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
                lease_owner TEXT, lease_expires REAL, attempts INTEGER NOT NULL DEFAULT 0, priority REAL,
                result TEXT, PRIMARY KEY (job_id, seq));
            INSERT INTO items (job_id, seq, item_id, line, text, state, priority, result)
            VALUES ('job-1', 0, 'a', 1, 'hello', 'done', 0.4, '{"id": "a", "flags": ["f"]}');
        """)
    migrated = SQLiteStore(path)
    assert list(migrated.iter_records("job-1")) == [{"id": "a", "flags": ["f"]}]
    assert migrated.flag_counts("job-1") == {"f": 1}
    migrated.close()


def test_a_lease_takes_labelling_work_and_besides_it_at_most_the_units_asked(store):
    store.create_job(job_record(), raw_items(6))
    store.lease("job-1", OWNER_A, 2, T0, 60)
    first = result(0)
    first.spawn = [Spawn(f"id0~{k}", "text 0", AUGMENT, {"step": k}) for k in range(3)]
    store.complete("job-1", OWNER_A, [first])  # item 1 stays leased by A; units are seqs 6, 7, 8
    assert [i.seq for i in store.lease("job-1", OWNER_B, 4, T0, 60)] == [2, 3, 4, 5]  # no units asked
    store.release(OWNER_B)
    leased = store.lease("job-1", OWNER_B, 3, T0 + 100, 60, units=2)  # A's lease on item 1 expired: first
    assert [(i.seq, i.kind) for i in leased] == [(1, "label"), (2, "label"), (3, "label"), (6, AUGMENT), (7, AUGMENT)]
    assert [i.seq for i in store.lease("job-1", OWNER_B, 0, T0 + 100, 60, units=5)] == [8]  # units only


# --- leases for several hosts: fencing, takeover only after expiry ----------------------------

def test_a_late_commit_after_the_lease_was_taken_over_is_refused_and_billed_once(store):
    store.create_job(job_record(), raw_items(1))
    [a] = store.lease("job-1", OWNER_A, 1, T0, lease_s=10)
    assert store.lease("job-1", OWNER_B, 1, T0 + 9, 60) == []  # another host waits for the expiry
    [b] = store.lease("job-1", OWNER_B, 1, T0 + 11, 60)  # A was paused past its lease: B takes the item
    assert b.epoch == a.epoch + 1
    late = result(0, usage=[usage(100, 5, 0.01)])
    late.epoch, late.records[0]["label"] = a.epoch, "from-A"
    assert store.complete("job-1", OWNER_A, [late]) == [0]  # refused: nothing written to the item...
    assert store.item("job-1", 0).state == "leased" and store.item("job-1", 0).lease_owner == OWNER_B
    assert store.item("job-1", 0).drafts == []
    # ...but what the provider charged for it is on the ledger, as paid for a lost lease, once
    totals = store.usage_totals("job-1")
    assert totals["requests_billed"] == 1 and store.get_job("job-1").spent_tokens == 105
    assert totals["paid_for_lost_leases"] == {"requests": 1, "tokens": 105, "cost_usd": 0.01}
    assert store.complete("job-1", OWNER_A, [late]) == [0]  # sent again: refused, not billed again
    assert store.get_job("job-1").spent_tokens == 105
    mine = result(0, usage=[usage(100, 5, 0.01)])
    mine.epoch = b.epoch
    assert store.complete("job-1", OWNER_B, [mine]) == []
    item = store.item("job-1", 0)
    assert item.state == "done" and [d["label"] for d in item.drafts] == ["positive"]
    totals = store.usage_totals("job-1")  # the item's own cost is B's; A's is no item's
    assert totals["requests_billed"] == 2 and store.get_job("job-1").spent_tokens == 210
    assert totals["paid_for_lost_leases"]["requests"] == 1
    # B's commit sent again (its acknowledgement lost): refused, and not billed twice either
    assert store.complete("job-1", OWNER_B, [mine]) == [0] and store.get_job("job-1").spent_tokens == 210


def test_a_result_from_an_earlier_lease_of_the_same_owner_is_refused(store):
    # The owner's own lease expired and it leased the item again (epoch 2): work done under epoch 1
    # committing now is refused; the same owner's owner check alone could not tell them apart.
    store.create_job(job_record(), raw_items(1))
    [first] = store.lease("job-1", OWNER_A, 1, T0, lease_s=1)
    store.complete("job-1", OWNER_A, [result(0, state="pending", release=True)])  # back to pending
    [second] = store.lease("job-1", OWNER_A, 1, T0 + 5, 60)
    stale = result(0, usage=[usage()])
    stale.epoch = first.epoch
    assert store.complete("job-1", OWNER_A, [stale]) == [0]
    assert store.counts("job-1") == {"leased": 1} and store.item("job-1", 0).drafts == []
    assert store.usage_totals("job-1")["paid_for_lost_leases"]["requests"] == 1  # paid, for no item
    fresh = result(0)
    fresh.epoch = second.epoch
    assert store.complete("job-1", OWNER_A, [fresh]) == [] and store.counts("job-1") == {"done": 1}


def test_heartbeats_keep_a_lease_from_being_taken_over(store):
    store.create_job(job_record(), raw_items(2))
    store.lease("job-1", OWNER_A, 2, T0, lease_s=10)
    for k in range(1, 6):
        store.renew(OWNER_A, T0 + 8 * k, 10)  # every 8 s, 10 s each time
        assert store.lease("job-1", OWNER_B, 2, T0 + 8 * k + 9, 60) == []
    assert [i.seq for i in store.lease("job-1", OWNER_B, 2, T0 + 8 * 5 + 11, 60)] == [0, 1]


def test_leases_holds_and_ingest_beats_are_on_the_database_clock_whatever_a_hosts_clock_says(store, url):
    """A host whose clock runs five minutes fast sees other hosts' live leases and holds as five
    minutes old: it must not take them over, and its own must not last five minutes too long."""
    store.create_job(job_record(), raw_items(2))
    fast = open_store(url)
    fast.host_clock = lambda: time.time() + 300
    try:
        now = time.time()
        assert [i.seq for i in store.lease("job-1", OWNER_A, 1, now, 60)] == [0]
        assert store.hold_budget("job-1", OWNER_A, 600, 0.0, 1000, None, now, 60) == (600, 0.0)
        assert [i.seq for i in fast.lease("job-1", OWNER_B, 2, fast.host_clock(), 60)] == [1]  # not A's item 0
        assert fast.hold_budget("job-1", OWNER_B, 1000, 0.0, 1000, None, fast.host_clock(), 60) == (400, 0.0)
        assert fast.runnable_jobs(fast.host_clock()) == []
        store.renew(OWNER_A, now, 60)
        # 61 s on: both leases are over on the database's clock (B's was not kept 300 s longer)
        assert [i.seq for i in store.lease("job-1", "host-c:3:cccccc", 2, now + 61, 60)] == [0, 1]
        # an ingest beat the fast host writes is now to the others, and to itself on its own clock
        with pytest.raises(ZeroDivisionError):
            fast.create_job(job_record("j2"), (1 / 0 for _ in range(1)), owner="fast:1:a")  # its reader dies
        assert abs(store.ingest_state("j2").beat - time.time()) < 5
        assert fast.claim_ingest("j2", "fast:2:b", "fast:1:a", fast.host_clock())
        assert abs(store.ingest_state("j2").beat - time.time()) < 5
        assert abs(fast.ingest_state("j2").beat - fast.host_clock()) < 5
    finally:
        fast.close()


def test_two_hosts_reclaiming_the_same_dead_owners_do_not_deadlock(url):
    """Two processes of one host reclaim the same dead owners, listed in opposite orders. Each stops
    after its first statement until the other has made its own (or 2 s have passed): owner by owner,
    each would hold one owner's items and wait for the other's (PostgreSQL aborts one: a deadlock)."""
    if not url.startswith("postgresql://"):
        pytest.skip("SQLite's transactions take the whole file's lock: there is no order to get wrong")
    setup = open_store(url)
    setup.create_job(job_record(), raw_items(6))
    dead = ["host-a:1:aaaaaa", "host-a:2:bbbbbb", "host-a:3:cccccc"]
    for owner in dead:
        setup.lease("job-1", owner, 2, T0, 600)
        setup.hold_budget("job-1", owner, 10, 0.0, None, None, T0, 600)
    setup.close()
    met = threading.Barrier(2, timeout=2.0)
    stores = [open_store(url) for _ in range(2)]
    for s in stores:
        s._c = _PausedAfterFirstStatement(s._c, met)
    try:
        released = _threads(2, lambda k: stores[k].reclaim(dead if k == 0 else dead[::-1]))
        assert sum(released) == 6 and stores[0].counts("job-1") == {"pending": 6}
        assert stores[0].hold_budget("job-1", "host-z:9:zzzzzz", 100, 0.0, 100, None, T0, 60) == (100, 0.0)
    finally:
        for s in stores:
            s.close()


class _PausedAfterFirstStatement:
    """A connector that waits at ``barrier`` after the first write of each transaction."""

    def __init__(self, inner, barrier: threading.Barrier) -> None:
        self.inner, self.barrier, self.first = inner, barrier, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @contextmanager
    def transaction(self, wait_s=None):
        with self.inner.transaction(wait_s):
            self.first = True
            yield

    def run(self, query: str, /, **params) -> int:
        n = self.inner.run(query, **params)
        if self.first:
            self.first = False
            try:
                self.barrier.wait()
            except threading.BrokenBarrierError:
                pass  # the other is waiting on this one's locks: go on
        return n


# The lock order (manager.py): items by seq, then cache rows, then the job row, then budget holds.
# Each query that locks (or writes, which locks until the transaction ends) rows of one kind, by its
# rank; a query not listed locks only rows no other transaction waits on (rows it inserts, a ledger).
_LOCK_RANK = {
    **dict.fromkeys(("fence", "lease", "renew", "release", "release_owners", "finish_item", "unlease_item",
                     "stop_pending", "stop_remaining", "requeue_item", "retry_failed", "resume_stopped"), 0),
    **dict.fromkeys(("delete_cache", "insert_cache"), 1),
    # "spend": the job row, then its owner's hold, in that order within the block
    **dict.fromkeys(("lock_job", "spend", "set_status", "ingest_done", "update_job_spec"), 2),
    **dict.fromkeys(("add_hold", "renew_holds", "drop_holds", "drop_owners_holds"), 3),
}


class _LockOrderRecorder:
    """A connector that records, per transaction, the lock-taking queries in the order they ran."""

    def __init__(self, inner) -> None:
        self.inner, self.depth, self.current, self.transactions = inner, 0, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @contextmanager
    def transaction(self, wait_s=None):
        self.depth += 1
        try:
            with self.inner.transaction(wait_s):
                yield
        finally:
            self.depth -= 1
            if not self.depth:
                self.transactions.append(self.current)
                self.current = []

    def _note(self, query: str) -> None:
        if query in _LOCK_RANK:
            self.current.append(query)
            if not self.depth:  # a statement on its own is a transaction of its own
                self.transactions.append(self.current)
                self.current = []

    def one(self, query, /, **params):
        self._note(query)
        return self.inner.one(query, **params)

    def all(self, query, /, **params):
        self._note(query)
        return self.inner.all(query, **params)

    def run(self, query, /, **params):
        self._note(query)
        return self.inner.run(query, **params)

    def many(self, query, /, rows):
        self._note(query)
        return self.inner.many(query, rows)

    def commit_with(self, query, /, **params):
        self._note(query)
        return self.inner.commit_with(query, **params)


def test_every_rule_takes_its_locks_in_the_one_order(store):
    """Every transaction a job's life makes (leases, holds, commits that spawn, refuse and uncache,
    heartbeats, reclaims, cancel, a batch tick's plan, live answers and collect) takes its row locks
    in the one order: two of them never wait on each other in a cycle on PostgreSQL. A rule that took
    the job row before an item (as commits did) fails here."""
    from prelabel.store.batches import ChunkRecord
    store.create_job(job_record(), raw_items(8))
    recorder = store._c = _LockOrderRecorder(store._c)
    leased = store.lease("job-1", OWNER_A, 4, T0, 600)
    store.hold_budget("job-1", OWNER_A, 100, 0.01, 10_000, 1.0, T0, 600)
    store.renew(OWNER_A, T0 + 1, 600)
    first = result(leased[0].seq, usage=[usage()], uncache=["k0"])
    first.spawn = [Spawn("id0~1", "text 0", AUGMENT, {"step": 0})]
    store.complete("job-1", OWNER_A, [first, result(leased[1].seq, release=True)], [usage()])
    store.lease("job-1", OWNER_B, 2, T0 + 10_000, 600)  # takes A's expired leases
    store.complete("job-1", OWNER_A, [result(leased[2].seq, usage=[usage()])])  # refused: billed as lost
    store.reclaim([OWNER_B])
    store.requeue("job-1", [leased[3].seq])
    chunk = ChunkRecord("job-1", "c1", "planned", 2, "/tmp/c1.jsonl", "http://e/v1", "m", T0)
    store.batch_plan(chunk, ["k1", "k2"], 10_000, None)
    store.batch_live_answers("job-1", OWNER_A, [("k3", {"answer": 1})], [(leased[3].seq, usage())])
    store.batch_collect("job-1", "c1", None, [usage()], [], T0)
    store.release(OWNER_A)
    store.cancel("job-1")
    assert any("fence" in t and "lock_job" in t for t in recorder.transactions)  # a commit that spawned
    for queries in recorder.transactions:
        ranks = [_LOCK_RANK[q] for q in queries]
        assert ranks == sorted(ranks), f"locks out of order: {queries}"


def test_a_commit_writes_its_items_before_it_waits_for_the_job_row(url):
    """Another transaction holds the job row (a budget hold being reckoned, another worker's commit):
    a commit's item, draft and usage writes go ahead and only its last statements wait, so several
    workers' commits on one job overlap instead of running one at a time (at 1M items, four workers
    spent most of their commit time waiting in lock_job when it came first)."""
    if not url.startswith("postgresql://"):
        pytest.skip("SQLite's transactions take the whole file's lock: there is no order to get wrong")
    import psycopg
    store = open_store(url)
    store.create_job(job_record(), raw_items(4))
    leased = store.lease("job-1", OWNER_A, 2, T0, 600)
    recorder = store._c = _LockOrderRecorder(store._c)
    holder = psycopg.connect(url)
    try:
        holder.execute("SELECT 1 FROM jobs WHERE id = 'job-1' FOR UPDATE")  # a transaction, left open
        done = threading.Event()
        thread = threading.Thread(target=lambda: (store.complete(
            "job-1", OWNER_A, [result(item.seq, usage=[usage()]) for item in leased]), done.set()))
        thread.start()
        deadline = time.monotonic() + 10
        while "spend" not in recorder.current and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.current[:2] == ["fence", "finish_item"] and recorder.current[-1] == "spend"
        assert not done.wait(0.3)  # it waits for the job row, its items' rows written and locked
        holder.rollback()
        assert done.wait(10)
        thread.join(10)
    finally:
        holder.close()
    assert store.counts("job-1") == {"done": 2, "pending": 2}
    assert store.get_job("job-1").spent_tokens == 24
    store.close()


class _RowByRowCacheDeletes:
    """A connector that deletes a commit's cache keys one statement each, in the order given, and
    waits at ``barrier`` after the first: two commits' deletes interleave row by row."""

    def __init__(self, inner, barrier: threading.Barrier) -> None:
        self.inner, self.barrier = inner, barrier

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def many(self, query, /, rows):
        if query != "delete_cache" or not rows:
            return self.inner.many(query, rows)
        n = 0
        for k, row in enumerate(rows):
            n += self.inner.run(query, **row)
            if k == 0:
                try:
                    self.barrier.wait()
                except threading.BrokenBarrierError:
                    pass  # the other waits on this one's rows: go on
        return n


def test_two_commits_dropping_the_same_answers_from_the_cache_do_not_deadlock(url):
    """Two items of the same text ask the same request: two workers' commits may both drop its
    cached answer (an invalid one). Each deletes its keys in key order, so they never hold one key
    each and wait for the other's (they overlap now that the job row is taken last)."""
    if not url.startswith("postgresql://"):
        pytest.skip("SQLite's transactions take the whole file's lock: there is no order to get wrong")
    setup = open_store(url)
    setup.create_job(job_record(), raw_items(4))
    setup.cache_put([("k1", {"a": 1}), ("k2", {"a": 2})])
    mine = {owner: setup.lease("job-1", owner, 2, T0, 600) for owner in (OWNER_A, OWNER_B)}
    setup.close()
    met = threading.Barrier(2, timeout=2.0)
    stores = [open_store(url) for _ in range(2)]
    for s in stores:
        s._c = _RowByRowCacheDeletes(s._c, met)
    keys = {OWNER_A: ["k1", "k2"], OWNER_B: ["k2", "k1"]}  # crosswise, as the results carry them
    try:
        refused = _threads(2, lambda k: stores[k].complete("job-1", owner := (OWNER_A, OWNER_B)[k], [
            result(item.seq, uncache=keys[owner]) for item in mine[owner]]))
        assert refused == [[], []]
        assert stores[0].counts("job-1") == {"done": 4} and stores[0].cache_get("k1") is None
    finally:
        for s in stores:
            s.close()


def test_a_commit_applies_one_result_per_item(store):
    """Items are written by their key: a commit carrying two results for one item (a finish and a
    release) applies the first only, and does not send a finished item back to the queue."""
    store.create_job(job_record(), raw_items(2))
    leased = store.lease("job-1", OWNER_A, 2, T0, 600)
    seq = leased[0].seq
    assert store.complete("job-1", OWNER_A, [result(seq, usage=[usage()]), result(seq, release=True)]) == []
    assert store.item("job-1", seq).state == "done" and len(store.item("job-1", seq).drafts) == 1
    assert store.counts("job-1") == {"done": 1, "leased": 1}
    assert store.get_job("job-1").spent_tokens == 12


# --- concurrency: threads and processes on one store ------------------------------------------

def _threads(n: int, target) -> list:
    out: list = [None] * n
    errors: list = []

    def run(k: int) -> None:
        try:
            out[k] = target(k)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


def test_threads_leasing_one_job_get_disjoint_items(url, store):
    n = 400
    store.create_job(job_record(), raw_items(n))
    stores = [open_store(url) for _ in range(4)]  # a store each: four workers, four connections

    def drain(k: int) -> list[int]:
        owner, taken = f"host-{k}:{k}:x", []
        while batch := stores[k].lease("job-1", owner, 7, T0, 600):
            taken += [i.seq for i in batch]
            done = [result(i.seq) for i in batch]
            for r, i in zip(done, batch):
                r.epoch = i.epoch
            assert stores[k].complete("job-1", owner, done) == []
        return taken

    try:
        taken = _threads(4, drain)
    finally:
        for s in stores:
            s.close()
    every = [seq for t in taken for seq in t]
    assert len(every) == len(set(every)) == n and set(every) == set(range(n))
    assert store.counts("job-1") == {"done": n}


def test_a_heartbeat_does_not_revive_a_budget_hold_that_lapsed(store):
    """A worker paused past its lease: its hold lapsed and another worker was granted that budget.
    Its next heartbeat renews its leases but not the lapsed hold, which would count the cap twice."""
    store.create_job(job_record(), raw_items(4))
    assert store.hold_budget("job-1", OWNER_A, 1000, 0.0, 1000, None, T0, 60) == (1000, 0.0)
    assert store.hold_budget("job-1", OWNER_B, 1000, 0.0, 1000, None, T0 + 61, 60) == (1000, 0.0)  # A's lapsed
    store.renew(OWNER_A, T0 + 62, 60)  # A wakes up: its heartbeat
    assert store.hold_budget("job-1", "host-c:3:cccccc", 1000, 0.0, 1000, None, T0 + 63, 60) == (0, 0.0)
    store.renew(OWNER_B, T0 + 100, 60)  # a live hold is renewed as before
    assert store.hold_budget("job-1", "host-c:3:cccccc", 1000, 0.0, 1000, None, T0 + 150, 60) == (0, 0.0)


def test_what_others_hold_of_a_budget_leaves_out_ones_own_and_lapsed_holds(store):
    store.create_job(job_record(), raw_items(4))
    store.hold_budget("job-1", OWNER_A, 300, 0.03, 1000, None, T0, 60)
    store.hold_budget("job-1", OWNER_B, 200, 0.02, 1000, None, T0, 600)
    assert store.budget_held_elsewhere("job-1", OWNER_A, T0 + 1) == (200, 0.02)
    assert store.budget_held_elsewhere("job-1", OWNER_B, T0 + 1) == (300, 0.03)
    assert store.budget_held_elsewhere("job-1", OWNER_B, T0 + 61) == (0, 0.0)  # A's lapsed
    leased = store.lease("job-1", OWNER_B, 1, T0 + 1, 600)
    store.complete("job-1", OWNER_B, [result(leased[0].seq, usage=[usage(150, 50, 0.02)])])  # B spent all of it
    assert store.budget_held_elsewhere("job-1", OWNER_A, T0 + 2) == (0, 0.0)


def test_racing_budget_holds_on_a_tight_cap_overspend_by_nothing(url, store):
    cap, ask = 1000, 7  # 1000 is not a multiple of 7: the last grant is a remainder
    store.create_job(job_record(), raw_items(400))
    stores = [open_store(url) for _ in range(4)]

    def spend(k: int) -> int:
        owner, granted = f"host-{k}:{k}:x", 0
        while True:
            tokens, _ = stores[k].hold_budget("job-1", owner, ask, 0.0, cap, None, T0, 600)
            if tokens == 0:
                return granted
            granted += tokens
            leased = stores[k].lease("job-1", owner, 1, T0, 600)
            r = result(leased[0].seq, usage=[usage(tokens, 0, 0.0)])
            r.epoch = leased[0].epoch
            stores[k].complete("job-1", owner, [r])  # spent, and the hold goes down by as much

    try:
        granted = _threads(4, spend)
    finally:
        for s in stores:
            s.close()
    assert sum(granted) == cap  # every token of the cap granted once: none over, none lost
    assert store.get_job("job-1").spent_tokens == cap
    assert store.usage_totals("job-1")["prompt_tokens"] == cap


def test_spawned_items_from_concurrent_commits_get_unique_seqs(url, store):
    store.create_job(job_record(), raw_items(40))
    stores = [open_store(url) for _ in range(4)]

    def finish(k: int) -> None:
        owner = f"host-{k}:{k}:x"
        while batch := stores[k].lease("job-1", owner, 2, T0, 600):
            done = []
            for item in batch:
                r = result(item.seq)
                r.epoch = item.epoch
                r.spawn = [Spawn(f"{item.item_id}~{j}", item.text, AUGMENT, {"step": j}) for j in range(3)]
                done.append(r)
            assert stores[k].complete("job-1", owner, done) == []

    try:
        _threads(4, finish)
    finally:
        for s in stores:
            s.close()
    assert store.kind_counts("job-1") == {"label": {"done": 40}, "augment": {"pending": 120}}
    units = store.lease("job-1", OWNER_A, 0, T0, 600, units=500)
    assert len(units) == 120 and len({u.seq for u in units}) == 120 and min(u.seq for u in units) == 40
    assert sorted(u.seq for u in units) == list(range(40, 160))  # numbered without gaps or repeats


# --- the queries each backend writes in its own dialect ---------------------------------------

def test_origin_and_variant_flag_counts_reviews_samples_and_spool_failures(store):
    from prelabel.store import ReviewRow

    store.create_job(job_record(), raw_items(4))
    leased = store.lease("job-1", OWNER_A, 4, T0, 60)
    records = [{"id": "a", "review_priority": 0.1, "flags": ["x"], "endpoint": "http://b", "simulated": True},
               {"id": "b", "review_priority": 0.2, "flags": [], "endpoint": "http://a"},
               {"id": "c", "review_priority": 0.3, "flags": ["y", "x"], "augmentation": {"kind": "noise"},
                "text": "variant text"},
               {"id": "d", "review_priority": 0.4, "flags": ["y"], "augmentation": None}]
    store.complete("job-1", OWNER_A, [ItemResult(i.seq, "done", 0.5, [r]) for i, r in zip(leased, records)])
    assert store.origin_counts("job-1") == [(None, False, 2), ("http://a", False, 1), ("http://b", True, 1)]
    assert store.variant_flag_counts("job-1") == {"noise": {"x": 1, "y": 1}}
    assert store.flag_counts("job-1") == {"x": 2, "y": 2}
    rows = [ReviewRow("a", "r1", "accepted", "positive", 10.0, 3.5, "f.json"),
            ReviewRow("a", "r1", "corrected", "negative", 5.0, None, "f.json"),  # older: kept out
            ReviewRow("b", "r2", "rejected", None, 10.0)]
    assert store.add_reviews("job-1", rows) == 2
    assert store.add_reviews("job-1", rows[:1]) == 0  # the same again changes nothing
    assert [(r.draft_id, r.verdict, r.label) for r in store.reviews("job-1")] == [
        ("a", "accepted", "positive"), ("b", "rejected", None)]
    store.add_samples("job-1", [("a", "informative"), ("b", "informative")])
    store.add_samples("job-1", [("a", "audit"), ("b", "informative")])
    assert store.samples("job-1") == {"a": "audit", "b": "informative"}
    store.spool_record("/s/b.yaml", "1", None, "bad")
    store.spool_record("/s/a.yaml", "1", None, "worse")
    store.spool_record("/s/B.yaml", "1", "job-1", None)
    assert [(f.path, f.error) for f in store.spool_failures()] == [("/s/a.yaml", "worse"), ("/s/b.yaml", "bad")]
    assert store.spool_entry("/s/B.yaml", "1").job_id == "job-1"


# --- PostgreSQL's migrations ------------------------------------------------------------------

@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # SQLite migrates by its columns (tested above)
def test_hosts_starting_at_once_migrate_a_new_database_once(url):
    barrier = threading.Barrier(4)

    def start(_: int) -> int:
        barrier.wait(30)
        s = open_store(url)
        try:
            s.create_job(job_record(f"job-{_}"), raw_items(2))
            return s._c.schema_version()
        finally:
            s.close()

    from prelabel.store.postgres import MIGRATIONS
    latest = MIGRATIONS[-1][0]
    assert _threads(4, start) == [latest] * 4
    import psycopg
    with psycopg.connect(url) as conn:  # each migration applied once, by one of them
        assert conn.execute("SELECT version FROM prelabel_schema ORDER BY version").fetchall() == [
            (version,) for version, _ in MIGRATIONS]
    s = open_store(url)
    try:
        assert sorted(j.id for j in s.list_jobs()) == ["job-0", "job-1", "job-2", "job-3"]
    finally:
        s.close()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # SQLite's planner is not PostgreSQL's
def test_a_commit_finds_its_items_by_their_key_with_statistics_taken_before_any_lease(url):
    """The planner's statistics are taken while every item waits (after the ingest); a commit's
    fence and item updates must still find each item by its primary key. With the state in an
    index over every item, they walked the leased range, every lease and finish since the last
    vacuum included: 10 ms a finished item at 64,000 of 1,000,000 done (bench/store_scale.py)."""
    import psycopg

    from prelabel.store.postgres import Q
    store = open_store(url)
    store.create_job(job_record(), raw_items(3000))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE items")
        assert {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'items'")} >= {
            "items_pkey", "items_pending"}
        leased = store.lease("job-1", OWNER_A, 1000, T0, 600)
        store.complete("job-1", OWNER_A, [result(item.seq) for item in leased[:900]])
        seqs = [item.seq for item in leased[900:]]
        params = {"fence": dict(job_id="job-1", owner=OWNER_A, seqs=seqs),
                  "finish_item": dict(job_id="job-1", seq=seqs[0], owner=OWNER_A, state="done", priority=0.5,
                                      result=None)}
        for query, values in params.items():
            plan = conn.execute("EXPLAIN (FORMAT JSON) " + Q[query], values).fetchone()[0]  # planned, not run
            used = {node["Index Name"] for node in _plan_nodes(plan[0]["Plan"]) if "Index Name" in node}
            assert used == {"items_pkey"}, (query, used)
    store.close()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # SQLite updates rows in place
def test_the_items_table_is_vacuumed_once_its_dead_row_versions_pile_up_by_one_host_at_a_time(url):
    """Each lease and finish leaves a dead version of the item's row that later leases walk; the
    server's autovacuum may be off (as on this project's CI machines) or behind. A store vacuums the
    table past a count of dead versions, unless another host is vacuuming it."""
    import psycopg

    from prelabel.store.upkeep import _VACUUM_LOCK
    store = open_store(url)
    upkeep = store._c.upkeep
    upkeep.check_rows, upkeep.dead_rows = 10**9, 300  # no check while the dead versions are made
    store.create_job(job_record(), raw_items(400))
    for _ in range(2):
        leased = store.lease("job-1", OWNER_A, 200, T0, 600)
        store.complete("job-1", OWNER_A, [result(item.seq) for item in leased])
    upkeep.check_rows = 100
    other = psycopg.connect(url, autocommit=True)
    try:
        def dead() -> tuple[int, int]:
            other.execute("SELECT pg_stat_clear_snapshot()")  # read the statistics afresh
            return other.execute("SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables "
                                 "WHERE relname = 'items' AND schemaname = current_schema()").fetchone()
        deadline = time.monotonic() + 30  # PostgreSQL flushes an idle backend's statistics within 10 s
        while dead()[0] < 300 and time.monotonic() < deadline:  # the server's statistics lag its commits
            time.sleep(0.1)
        assert dead()[0] >= 300
        other.execute("SELECT pg_advisory_lock(%s)", (_VACUUM_LOCK,))  # another host vacuums it
        vacuums = upkeep.vacuums
        store._c.churned(100)
        upkeep.join(10)
        assert upkeep.vacuums == vacuums  # left to the other host
        other.execute("SELECT pg_advisory_unlock(%s)", (_VACUUM_LOCK,))
        store._c.churned(100)
        upkeep.join(30)
        assert upkeep.vacuums == vacuums + 1
        while dead()[1] < 1 and time.monotonic() < deadline + 15:
            time.sleep(0.1)
        assert dead()[0] < 300 and dead()[1] >= 1
    finally:
        other.close()
    assert store.counts("job-1") == {"done": 400}
    store.close()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # SQLite updates in place: no vacuum
def test_closing_a_store_cancels_its_vacuum_under_way_and_ends_its_upkeep_thread(url, caplog):
    import psycopg

    store = open_store(url)
    upkeep = store._c.upkeep
    connect, vacuuming = upkeep._connect, threading.Event()

    def slow_vacuum():  # the table is big: its vacuum takes a minute
        conn = connect()
        execute = conn.execute

        def run(sql, *args):
            if sql.startswith("VACUUM"):
                vacuuming.set()
                sql = "SELECT pg_sleep(60) /* the vacuum */"
            return execute(sql, *args)
        conn.execute = run
        return conn

    upkeep._connect, upkeep.check_rows, upkeep.dead_rows = slow_vacuum, 1, 0
    store._c.churned(1)
    assert vacuuming.wait(10)
    thread = upkeep._thread
    started = time.monotonic()
    store.close()
    assert time.monotonic() - started < 10 and not thread.is_alive()
    with psycopg.connect(url, autocommit=True) as admin:  # nothing left running on the server
        running = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                "AND query LIKE %s", ("%/* the vacuum */",)).fetchone()[0]
    assert running == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # stopped, not failed
    store._c.churned(10)  # a closed store starts no upkeep
    assert upkeep._thread is thread

@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # SQLite has no idle timeout
def test_a_stream_read_slowly_is_not_ended_by_the_idle_transaction_timeout(url, monkeypatch):
    """The pool's connections have the server end a transaction left idle (a stopped worker's, with
    its locks); a stream's reader may take its time between pages (an export), and holds no lock."""
    import prelabel.store.postgres as pg
    monkeypatch.setattr(pg, "STORE_IDLE_TRANSACTION_S", 0.2)
    store = open_store(url)
    try:
        store.create_job(job_record(), raw_items(1500))
        texts = []
        for text in store.item_texts("job-1"):
            texts.append(text)
            if len(texts) == 1:
                time.sleep(0.6)  # the next page is fetched after this: the transaction sat idle
        assert len(texts) == 1500
    finally:
        store.close()


def _plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # SQLite's case: tests/faults/test_storage_faults.py
def test_a_postgresql_database_that_is_not_prelabels_is_refused(url):
    import psycopg

    from prelabel.errors import StorageError
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StorageError, match="not prelabel's"):
        open_store(url)


def test_an_unreachable_postgresql_server_is_a_storage_error_naming_it_without_its_password():
    pytest.importorskip("psycopg")
    from prelabel.errors import StorageError
    with pytest.raises(StorageError) as raised:
        open_store("postgresql://postgres:s3cret@127.0.0.1:1/prelabel", busy_timeout_s=2)
    message = str(raised.value)
    assert message.startswith("postgresql://postgres@127.0.0.1:1/prelabel: cannot reach the PostgreSQL server")
    assert "s3cret" not in message


def test_a_deadlock_is_not_reported_as_an_unreachable_server():
    psycopg = pytest.importorskip("psycopg")
    from prelabel.store.postgres import PostgresConnector, storage_error
    error = psycopg.errors.DeadlockDetected("deadlock detected")
    assert "locks crossed" in str(storage_error("postgresql://h/db", error))
    assert not PostgresConnector.disconnected(None, error)  # not made again as a lost connection


# --- workers: the shared rate limit's coordinator, and `prelabel status` ----------------------

def test_the_pace_secret_is_made_once_per_store_and_read_back_by_everyone(store, url):
    secrets = _threads(4, lambda _: store.pace_secret())
    other = open_store(url)
    try:
        again = other.pace_secret()
    finally:
        other.close()
    assert len(secrets[0]) == 32 and set(secrets) == {again}


def test_a_beat_keeps_joined_returns_the_live_workers_of_its_pace_key_and_counts_leases(store):
    store.create_job(job_record(), raw_items(5))
    store.lease("job-1", OWNER_A, 3, time.time(), 60)
    now, peers = store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=5)
    assert [(p.worker, p.joined, p.beat, p.rpm) for p in peers] == [(OWNER_A, now, now, 6000.0)]
    assert abs(now - time.time()) < 5  # the database's clock
    later, peers = store.worker_beat(OWNER_A, "job-1", "key-1", 3000, 1e6, stale_s=5)
    assert later >= now and [(p.joined, p.beat, p.rpm) for p in peers] == [(now, later, 3000.0)]
    _, peers = store.worker_beat(OWNER_B, "job-1", "key-1", 6000, 1e6, stale_s=5)
    assert [p.worker for p in peers] == [OWNER_A, OWNER_B]
    _, peers = store.worker_beat("host-c:3:cccccc", "job-1", "key-2", 6000, 1e6, stale_s=5)
    assert [p.worker for p in peers] == ["host-c:3:cccccc"]  # another endpoint or key: its own share
    live = {w.worker: w for w in store.live_workers(stale_s=5)}
    assert set(live) == {OWNER_A, OWNER_B, "host-c:3:cccccc"}
    a = live[OWNER_A]
    assert (a.host, a.pid, a.job_id, a.leased) == ("host-a", 1, "job-1", 3) and a.age_s < 5
    assert live[OWNER_B].leased == 0
    store.worker_leave(OWNER_B)
    _, peers = store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=5)
    assert [p.worker for p in peers] == [OWNER_A]
    assert OWNER_B not in {w.worker for w in store.live_workers(stale_s=5)}


def test_a_worker_counted_out_joins_again_and_stale_ones_are_not_live(store):
    stale = 0.4  # the database's clock decides (no clock to inject): wide enough for a loaded machine
    first, _ = store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=stale)
    store.worker_beat(OWNER_B, "job-1", "key-1", 6000, 1e6, stale_s=stale)
    time.sleep(2 * stale)  # past stale_s: both counted out
    now, peers = store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=stale)
    assert [(p.worker, p.joined) for p in peers] == [(OWNER_A, now)] and now > first
    assert [w.worker for w in store.live_workers(stale_s=stale)] == [OWNER_A]


def test_a_worker_holding_leases_without_beating_is_silent_with_its_leases_end_and_one_without_is_not(store):
    stale = 0.4  # the database's clock decides, as above
    store.create_job(job_record(), raw_items(10))
    start = time.time()
    store.lease("job-1", OWNER_B, 3, start, 60)
    store.worker_beat(OWNER_B, "job-1", "key-1", 6000, 1e6, stale_s=stale)  # then stopped: it beats no more
    store.lease("job-1", "host-c:3:cccccc", 2, start, 90)  # never beat (its row gone, or none made)
    store.worker_beat("host-d:4:dddddd", "job-1", "key-1", 6000, 1e6, stale_s=stale)  # stale, holding nothing
    time.sleep(2 * stale)
    store.lease("job-1", OWNER_A, 1, time.time(), 60)
    store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=stale)
    [live] = store.live_workers(stale_s=stale)
    assert (live.worker, live.live, live.leased) == (OWNER_A, True, 1) and live.leases_end > start + 59
    silent = store.silent_workers(stale_s=stale)
    assert [(w.worker, w.host, w.pid, w.job_id, w.leased, w.live) for w in silent] == [
        (OWNER_B, "host-b", 2, "job-1", 3, False), ("host-c:3:cccccc", "host-c", 3, "job-1", 2, False)]
    b, c = silent
    assert b.age_s >= stale and b.beat is not None and c.age_s is None and c.beat is None
    # When their leases lapse, on this host's clock (the lease's own `now` plus its length).
    assert abs(b.leases_end - (start + 60)) < 5 and abs(c.leases_end - (start + 90)) < 5
    store.release(OWNER_B)
    assert [w.worker for w in store.silent_workers(stale_s=stale)] == ["host-c:3:cccccc"]


def test_a_rejoining_worker_joins_again_now_though_its_last_beat_is_fresh(store):
    first, _ = store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=60)
    _, peers = store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=60)
    assert [p.joined for p in peers] == [first]
    time.sleep(0.01)  # the database's clock moves on (SQLite's counts milliseconds)
    now, peers = store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=60, rejoin=True)
    assert [(p.joined, p.beat) for p in peers] == [(now, now)] and now > first

def test_a_beat_does_not_wait_long_on_a_lock(store, url):
    store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=5)
    if url.startswith("postgresql://"):
        import psycopg
        holder = psycopg.connect(url)
        holder.execute("LOCK TABLE workers IN EXCLUSIVE MODE")
    else:
        holder = sqlite3.connect(url, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreError) as raised:
            store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=5)
        assert time.monotonic() - started < 10 and raised.value.locked  # about a beat, not the busy timeout
    finally:
        holder.rollback() if url.startswith("postgresql://") else holder.execute("ROLLBACK")
        holder.close()
    _, peers = store.worker_beat(OWNER_A, "job-1", "key-1", 6000, 1e6, stale_s=5)  # and then it lands
    assert [p.worker for p in peers] == [OWNER_A]
