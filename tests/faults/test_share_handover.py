"""The shared rate limit's hand-overs between workers, against the real store (issue 11): two beats of
one pace key that race must not both find their worker alone (each would pace at the whole ceiling),
on SQLite and on PostgreSQL."""
from __future__ import annotations

import threading

from prelabel.store import open_store
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url  # the contract suite's fixtures: SQLite and PostgreSQL

A, B = "host-a:1:aaaaaa", "host-b:2:bbbbbb"


def _hold_the_pace_key(url: str):
    """Another session holding what a beat of ``key-1`` takes first (PostgreSQL: the key's advisory
    lock; SQLite: the file's write lock), until the returned function is called."""
    if url.startswith("postgresql"):
        import psycopg
        holder = psycopg.connect(url)  # not autocommit: the lock lasts to the transaction's end
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('key-1', 0))")
    else:
        import sqlite3
        holder = sqlite3.connect(url, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")

    def let_go():
        holder.rollback() if url.startswith("postgresql") else holder.execute("ROLLBACK")
        holder.close()
    return let_go


def test_two_beats_of_one_key_that_race_never_both_find_their_worker_alone(url, monkeypatch):
    """Both beats start while the key's lock is held elsewhere, so they race for it when it is let
    go: each runs whole (its one message) before the other, and the second sees the first."""
    import prelabel.store.manager as manager

    monkeypatch.setattr(manager, "WORKER_BEAT_WAIT_S", 30.0)  # the lock waited on here is the test's own
    first, second = open_store(url), open_store(url)
    got: dict[str, list[str]] = {}

    def beat(store, worker):
        _, peers = store.worker_beat(worker, "job-1", "key-1", 6000, 1e6, stale_s=5)
        got[worker] = [p.worker for p in peers]

    let_go = _hold_the_pace_key(url)
    try:
        a = threading.Thread(target=beat, args=(first, A))
        b = threading.Thread(target=beat, args=(second, B))
        a.start(), b.start()
        a.join(0.3), b.join(0.3)
        assert a.is_alive() and b.is_alive()  # each beat waits for the key's lock (not a timing assert:
        # a beat that took no lock is over in milliseconds)
    finally:
        let_go()
    a.join(30), b.join(30)
    first.close()
    second.close()
    assert sorted(got) == [A, B]
    assert [A, B] in got.values(), got  # the second to run saw the first
