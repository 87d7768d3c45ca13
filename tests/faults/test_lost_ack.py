"""Store calls made again after a lost acknowledgement (issue 11): the server committed, the reply
never came, and ``manager._translated`` makes the whole call again. Each write must then be done
once: the ledger, the spend, budget holds, leases, runs and ingest claims exactly as for one call,
and the repeat returns what the first attempt would have.

The fault is a wrapper around the store's connector (``LostAcks``): the transaction COMMITs, then
its caller gets the driver's disconnect error (psycopg's ``OperationalError``, as a restart right
after a COMMIT raises; for SQLite, whose file cannot lose a connection, sqlite3's, which the wrapper
calls a disconnect so that the same rules run over SQLite's SQL). Both backends, as the contract
suite makes them; no test sleeps (the backoff is 0).
"""
from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest

from prelabel.errors import InputError
from prelabel.job.inputs import RawItem
from prelabel.llm.stats import RunStats
from prelabel.store import manager
from prelabel.store.batches import ChunkRecord
from tests.integration import test_store_contract as contract
from tests.integration.test_store_contract import OWNER_A, OWNER_B, T0, job_record, raw_items, result, usage

pg_database, url, store = contract.pg_database, contract.url, contract.store  # the contract suite's fixtures

ACK, ROLLBACK = "ack", "rollback"  # the connection drops after the COMMIT, or before it (nothing written)


class LostAcks:
    """A connector whose next writes are followed by a dropped connection: ``drop(ACK)`` lets the next
    write commit and then raises the driver's disconnect error, as a lost acknowledgement does;
    ``drop(ROLLBACK)`` raises it inside the transaction, which rolls back: before its ``commit_with``
    where it has one (that sends the COMMIT). A write is an outermost transaction, or a statement run
    outside one (autocommitted)."""

    def __init__(self, inner, postgres: bool) -> None:
        self.inner, self.postgres = inner, postgres
        self.plan: list[str] = []
        self.dropped: list[str] = []
        self._local = threading.local()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def drop(self, *modes: str) -> None:
        self.plan.extend(modes)

    def _error(self) -> BaseException:
        if self.postgres:
            import psycopg
            error = psycopg.OperationalError("server closed the connection unexpectedly")  # no SQLSTATE: the socket
        else:
            error = sqlite3.OperationalError("injected: the connection was lost")
        error.injected = True
        return error

    def disconnected(self, error: BaseException) -> bool:
        return getattr(error, "injected", False) or self.inner.disconnected(error)

    def _fire(self, mode: str) -> None:
        if self.plan and self.plan[0] == mode:
            self.dropped.append(self.plan.pop(0))
            raise self._error()

    @contextmanager
    def transaction(self, wait_s: float | None = None):
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            if depth == 0:
                self._local.committed = False
            with self.inner.transaction(wait_s):
                yield
                if depth == 0 and not self._local.committed:
                    self._fire(ROLLBACK)
        finally:
            self._local.depth = depth
        if depth == 0:
            self._fire(ACK)

    def _autocommitted(self, write, *args, **params) -> int:
        alone = not getattr(self._local, "depth", 0)
        if alone:
            self._fire(ROLLBACK)  # dropped before it ran
        n = write(*args, **params)
        if alone:
            self._fire(ACK)
        return n

    def run(self, query: str, /, **params) -> int:
        return self._autocommitted(self.inner.run, query, **params)

    def commit_with(self, query: str, /, **params) -> list[tuple]:
        self._fire(ROLLBACK)  # its COMMIT not sent yet
        self._local.committed = True  # the end of the body: nothing to roll back there any more
        return self.inner.commit_with(query, **params)

    def many(self, query: str, /, rows: list[dict]) -> int:
        return self._autocommitted(self.inner.many, query, rows)


@pytest.fixture
def lost(store, url, monkeypatch) -> LostAcks:
    monkeypatch.setattr(manager, "reconnect_delay", lambda attempt: 0.0)  # made again at once
    faults = LostAcks(store._c, url.startswith("postgresql://"))
    store._c = faults
    return faults


def budget_left(store, cap: int = 10_000) -> int:
    """What another owner is granted of a ``cap`` (spent and live holds taken off): holds, read
    through the interface."""
    return store.hold_budget("job-1", "host-z:9:zzzzzz", cap, 0.0, cap, None, T0, 60)[0]


def test_a_commit_made_again_after_a_lost_ack_writes_and_bills_once(store, lost):
    store.create_job(job_record(), raw_items(4))
    assert store.hold_budget("job-1", OWNER_A, 1000, 0.0, 10_000, None, T0, 600) == (1000, 0.0)
    leased = store.lease("job-1", OWNER_A, 4, T0, 600)
    done = result(0, usage=[usage(10, 2, 0.001)])
    released = result(1, state="pending", release=True, usage=[usage(20, 0, 0.002)])  # stopped part-way, paid
    late = result(2, usage=[usage(30, 0, 0.003)])  # worked under an earlier lease: refused, paid for no item
    for r, item in zip((done, released, late), leased):
        r.epoch = item.epoch
    late.epoch -= 1
    lost.drop(ACK)
    assert store.complete("job-1", OWNER_A, [done, released, late], [usage(7, 0, 0.0007)]) == [2]
    assert lost.dropped == [ACK]  # it was made again
    totals = store.usage_totals("job-1")
    assert totals["requests_billed"] == 4 and totals["prompt_tokens"] == 67 and totals["completion_tokens"] == 2
    assert totals["paid_for_lost_leases"] == {"requests": 1, "tokens": 30, "cost_usd": 0.003}
    assert store.get_job("job-1").spent_tokens == 69
    assert budget_left(store) == 10_000 - 69 - (1000 - 69)  # the hold went down by what was spent, once
    assert store.counts("job-1") == {"done": 1, "pending": 1, "leased": 2}
    assert [r["seq"] for r in store.iter_records("job-1")] == [0]


def test_a_commit_whose_connection_dropped_before_its_commit_is_made_again_and_bills_once(store, lost):
    """Dropped just before the message that carries its spending and its COMMIT: nothing of it was
    written, and the call made again writes it all once."""
    store.create_job(job_record(), raw_items(2))
    leased = store.lease("job-1", OWNER_A, 2, T0, 600)
    lost.drop(ROLLBACK)
    assert store.complete("job-1", OWNER_A, [result(item.seq, usage=[usage(10, 2, 0.001)]) for item in leased]) == []
    assert lost.dropped == [ROLLBACK]
    assert store.counts("job-1") == {"done": 2}
    assert store.usage_totals("job-1")["requests_billed"] == 2 and store.get_job("job-1").spent_tokens == 24


def test_a_lease_made_again_after_a_lost_ack_returns_its_items_and_takes_no_more(store, lost):
    store.create_job(job_record(), raw_items(5))
    lost.drop(ACK)
    items = store.lease("job-1", OWNER_A, 2, T0, 600)
    assert lost.dropped == [ACK]
    assert [(i.seq, i.item_id, i.text, i.epoch) for i in items] == [(0, "id0", "text 0", 1), (1, "id1", "text 1", 1)]
    assert store.counts("job-1") == {"leased": 2, "pending": 3}
    assert [store.item("job-1", seq).epoch for seq in range(5)] == [1, 1, 0, 0, 0]
    store.complete("job-1", OWNER_A, [result(i.seq) for i in items])  # and the lease is the worker's to commit
    assert store.counts("job-1") == {"done": 2, "pending": 3}


def test_a_lease_that_found_nothing_is_made_again_as_nothing(store, lost):
    store.create_job(job_record(), raw_items(1))
    store.lease("job-1", OWNER_B, 1, T0, 600)
    lost.drop(ACK)
    assert store.lease("job-1", OWNER_A, 2, T0, 600) == [] and lost.dropped == [ACK]


def test_a_call_dropped_before_its_commit_is_made_again_and_done_once(store, lost):
    # The first attempt rolled back (nothing to find), the second committed and lost its reply: the third
    # returns the second's items.
    store.create_job(job_record(), raw_items(5))
    lost.drop(ROLLBACK, ACK)
    items = store.lease("job-1", OWNER_A, 2, T0, 600)
    assert lost.dropped == [ROLLBACK, ACK]
    assert [(i.seq, i.epoch) for i in items] == [(0, 1), (1, 1)]
    assert store.counts("job-1") == {"leased": 2, "pending": 3}


def test_a_budget_hold_made_again_after_a_lost_ack_is_held_once(store, lost):
    store.create_job(job_record(), raw_items(1))
    lost.drop(ACK)
    assert store.hold_budget("job-1", OWNER_A, 600, 0.0, 1000, None, T0, 60) == (600, 0.0)  # not 400: its own
    assert lost.dropped == [ACK]
    assert store.hold_budget("job-1", OWNER_B, 1000, 0.0, 1000, None, T0, 60) == (400, 0.0)  # no phantom hold


def test_a_run_recorded_again_after_a_lost_ack_counts_once(store, lost):
    store.create_job(job_record(), raw_items(1))
    lost.drop(ACK)
    store.add_run("job-1", OWNER_A, T0, RunStats(requests=5, retries=1, wall_s=2.0))
    assert lost.dropped == [ACK]
    totals = store.run_totals("job-1")
    assert (totals["runs"], totals["requests"], totals["retries"], totals["wall_s"]) == (1, 5, 1, 2.0)


class _Killed(Exception):
    pass


def _dies_after(items, n: int):
    for k, item in enumerate(items):
        if k == n:
            raise _Killed
        yield item


def test_an_ingest_claim_made_again_after_a_lost_ack_is_still_the_claimers(store, lost, monkeypatch):
    monkeypatch.setattr(manager, "INGEST_BATCH", 2)
    with pytest.raises(_Killed):
        store.create_job(job_record("j"), _dies_after((RawItem(k + 1, f"i{k}", "t") for k in range(10)), 3),
                         "slow:1:a")
    state = store.ingest_state("j")
    lost.drop(ACK)
    assert store.claim_ingest("j", "new:2:b", state.owner, time.time())  # it took the job, and is told so
    assert lost.dropped == [ACK] and store.ingest_state("j").owner == "new:2:b"
    assert not store.claim_ingest("j", "third:3:c", state.owner, time.time())  # one taker still wins
    rest = [RawItem(k + 1, f"i{k}", "t") for k in range(state.line, 10)] + [InputError("bad", line=11)]
    store.continue_ingest("j", "new:2:b", rest, state.next_seq)
    assert store.counts("j") == {"pending": 10}


def test_batch_plans_and_collects_made_again_after_a_lost_ack_hold_and_bill_once(store, lost):
    store.create_job(job_record(), raw_items(1))
    chunk = ChunkRecord("job-1", "000000", "planned", 2, "/tmp/000000.jsonl", "/v1/chat/completions", "m", T0, 1,
                        1000, 0.0)
    lost.drop(ACK)
    assert store.batch_plan(chunk, ["k1", "k2"], 10_000, None) == (1000, 0.0)
    assert [c.chunk for c in store.batch_chunks("job-1")] == ["000000"] and budget_left(store) == 9000
    lost.drop(ACK)
    assert store.batch_collect("job-1", "000000", None, [usage(50, 5, 0.0)], [("k2", "status 500", True)], T0)
    assert lost.dropped == [ACK, ACK]
    assert store.get_job("job-1").spent_tokens == 55 and store.usage_totals("job-1")["requests_billed"] == 1
    assert store.batch_failures("job-1")["k2"].attempts == 1


def test_counts_a_user_is_shown_are_the_first_attempts_on_a_repeat(store, lost):
    from prelabel.store import ReviewRow
    store.create_job(job_record(), raw_items(4))
    leased = store.lease("job-1", OWNER_A, 4, T0, 600)
    store.complete("job-1", OWNER_A, [result(i.seq, state="failed") for i in leased[:3]])
    lost.drop(ACK)
    assert store.requeue("job-1", [0]) == 1
    lost.drop(ACK)
    assert store.retry_failed("job-1") == 2  # `submit` says how many items it resumed
    store.stop_remaining("job-1")
    lost.drop(ACK)
    assert store.resume_stopped("job-1") == 3
    review = ReviewRow("id0#0", "ann", "accepted", None, T0, None, "reviews.jsonl")
    lost.drop(ACK)
    assert store.add_reviews("job-1", [review]) == 1  # `review import` says how many changed
    assert lost.dropped == [ACK] * 4
    assert store.counts("job-1") == {"pending": 3, "leased": 1} and len(store.reviews("job-1")) == 1


def test_a_batch_ticks_live_answers_made_again_after_a_lost_ack_are_billed_once(store, lost):
    """A tick's re-asks and embeddings sent live are cached and billed as they arrive
    (``batch_live_answers``): repeated after a lost acknowledgement, they are billed once."""
    store.create_job(job_record(), raw_items(1))
    lost.drop(ACK)
    store.batch_live_answers("job-1", OWNER_A, [("k1", {"content": "x"})], [(0, usage(40, 4, 0.002))])
    assert lost.dropped == [ACK]
    job = store.get_job("job-1")
    assert (job.spent_tokens, store.usage_totals("job-1")["requests_billed"]) == (44, 1)
    assert store.cache_get("k1") == {"content": "x"}
