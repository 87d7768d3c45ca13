"""A worker stopped inside a commit (SIGSTOP, a paused VM) must not stop every other worker's commits
for as long as it is stopped (issue 11's stop scenario, PostgreSQL): its commit holds the job row
(from its spending to its COMMIT; the rest of a commit's locks are its own items' rows), so
the server ends a transaction left idle on its client for ``STORE_IDLE_TRANSACTION_S``, with its
locks. The stopped worker, resumed, makes its call again (the lost session counts as a lost
connection) and its result is committed once.

The stop is an event the test sets, not a sleep: without the timeout the other commit would wait
for it, and the test fails after 20 s instead of hanging."""
from __future__ import annotations

import threading
import time

import pytest

from prelabel.store import open_store
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url
job_record, raw_items, result, usage = contract.job_record, contract.raw_items, contract.result, contract.usage
A, B = "host-a:1:aaaaaa", "host-b:2:bbbbbb"
T0 = 1_000_000.0


def _stopped_and_other(url, monkeypatch, method: str, query: str):
    """Two stores of one PostgreSQL database: the first stops once, right after its connector's
    ``method`` ran ``query`` (inside that transaction), until the test sets ``resume``: a SIGSTOP as
    an event. The server's idle timeout is short and reconnecting has no backoff to wait through."""
    if not url.startswith("postgresql"):
        pytest.skip("SQLite's write lock is the file's: a stopped writer is waited for up to the busy timeout")
    import prelabel.store.manager as manager
    import prelabel.store.postgres as postgres

    monkeypatch.setattr(postgres, "STORE_IDLE_TRANSACTION_S", 0.3)
    monkeypatch.setattr(manager, "reconnect_delay", lambda attempt: 0.0)
    stopped, other = open_store(url), open_store(url)
    inside, resume = threading.Event(), threading.Event()
    inner = getattr(stopped._c, method)

    def stops_once(name, /, *args, **params):
        out = inner(name, *args, **params)
        if name == query and not inside.is_set():
            inside.set()
            resume.wait(30)  # SIGSTOP ... SIGCONT
        return out

    setattr(stopped._c, method, stops_once)
    return stopped, other, inside, resume


def test_a_worker_stopped_inside_a_commit_does_not_hold_the_others_commits(url, monkeypatch):
    # a commit's spending: the job row is locked from there to its COMMIT
    stopped, other, inside, resume = _stopped_and_other(url, monkeypatch, "run", "add_spent")
    outcome: dict[str, object] = {}

    def commit(store, owner, seq, key):
        try:
            store.complete("job-1", owner, [result(seq, usage=[usage(100, 5, 0.01)])])
            outcome[key] = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported by the asserts
            outcome[key] = e

    try:
        other.create_job(job_record(), raw_items(2))
        other.lease("job-1", B, 1, T0, 600)
        stopped.lease("job-1", A, 1, T0, 600)
        first = threading.Thread(target=commit, args=(stopped, A, 1, "stopped"))
        first.start()
        assert inside.wait(20)
        started = time.monotonic()
        second = threading.Thread(target=commit, args=(other, B, 0, "other"))
        second.start()
        second.join(20)
        assert isinstance(outcome.get("other"), float), outcome  # done while the first is still stopped
        assert outcome["other"] - started < 10
        resume.set()
        first.join(30)
        assert isinstance(outcome.get("stopped"), float), outcome  # its call made again, on a new session
        assert other.counts("job-1") == {"done": 2}
        assert other.get_job("job-1").spent_tokens == 210  # each result billed once
    finally:
        resume.set()
        stopped.close()
        other.close()


def test_a_worker_stopped_inside_a_cache_write_does_not_hold_the_same_answers_write(url, monkeypatch):
    """A takeover asks a stopped worker's requests again, so its answers go to the cache under the
    stopped worker's keys, whose rows that worker may hold: the server ends its idle transaction and
    the takeover's write goes through; the stopped one, resumed, writes its own again. (The cache
    write is one statement: a client stopped inside a pipeline of them is never idle to the server.)"""
    stopped, other, inside, resume = _stopped_and_other(url, monkeypatch, "many", "insert_cache")
    done: dict[str, object] = {}

    def put(store, key, answer):
        try:
            store.cache_put([("k-b", {"who": answer}), ("k-a", {"who": answer})])
            done[key] = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported by the asserts
            done[key] = e

    try:
        first = threading.Thread(target=put, args=(stopped, "stopped", "stopped"))
        first.start()
        assert inside.wait(20)
        second = threading.Thread(target=put, args=(other, "other", "takeover"))
        second.start()
        second.join(20)
        assert isinstance(done.get("other"), float), done  # written while the first is still stopped
        resume.set()
        first.join(30)
        assert isinstance(done.get("stopped"), float), done
        assert other.cache_get("k-a") is not None and other.cache_get("k-b") is not None
    finally:
        resume.set()
        stopped.close()
        other.close()
