"""The shared rate limit's hand-overs between workers, against the real store (issue 11): two beats of
one pace key that race must not both find their worker alone (each would pace at the whole ceiling),
on SQLite and on PostgreSQL."""
from __future__ import annotations

import threading
import time

from prelabel.store import open_store
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url  # the contract suite's fixtures: SQLite and PostgreSQL

A, B = "host-a:1:aaaaaa", "host-b:2:bbbbbb"


def test_two_beats_of_one_key_that_race_never_both_find_their_worker_alone(url, monkeypatch):
    import prelabel.store.manager as manager

    monkeypatch.setattr(manager, "WORKER_BEAT_WAIT_S", 30.0)  # the lock waited on here is the test's own
    first, second = open_store(url), open_store(url)
    inside, release = threading.Event(), threading.Event()
    run = first._c.run

    def held(query, /, **params):  # A's beat stops inside its transaction, its row written, not committed
        n = run(query, **params)
        if query == "worker_beat":
            inside.set()
            release.wait(30)
        return n

    first._c.run = held
    got: dict[str, list[str]] = {}

    def beat(store, worker):
        _, peers = store.worker_beat(worker, "job-1", "key-1", 6000, 1e6, stale_s=5)
        got[worker] = [p.worker for p in peers]

    try:
        a = threading.Thread(target=beat, args=(first, A))
        a.start()
        assert inside.wait(30)
        b = threading.Thread(target=beat, args=(second, B))
        b.start()
        time.sleep(0.3)  # B's beat, unserialised, would be over by now (not a timing assert: it only gives it time)
        release.set()
        a.join(30), b.join(30)
    finally:
        release.set()
        first.close()
        second.close()
    # B's beat came after A's had begun: it waited for it, and saw it
    assert got == {A: [A], B: [A, B]}
