"""A killed worker's share is free at its peers' next beat (issue 11), not ``stale_s`` after its last
one: each worker holds a life lock that dies with its process (PostgreSQL: a session advisory lock on a
connection of its own; SQLite: a byte of a file beside the store, locked by an open file description),
and each roll says whose is held. Against the real stores: a worker SIGKILLed in a process of its own,
a life connection the server dropped (the worker comes back as a newcomer), a worker that leaves.

``stale_s`` is a minute throughout: only the life lock can count a worker out this soon."""
from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from prelabel.errors import StoreError
from prelabel.llm.shares import decide_share
from prelabel.store import open_store
from prelabel.store import sqlite as sqlite_store
from prelabel.worker.coordinator import StoreCoordinator
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url  # the contract suite's fixtures: SQLite and PostgreSQL

STALE_S = 60.0
KEY = "key-1"


def ids(*names: str) -> list[str]:
    nonce = uuid.uuid4().hex[:6]  # the life locks are the database's: no two tests share an id
    return [f"{name}:{n}:{nonce}" for n, name in enumerate(names, start=1)]


def beat(coordinator: StoreCoordinator, worker: str):
    return coordinator.beat(worker, "job-1", KEY, 6000, 1e6, STALE_S)


def until(check, timeout: float = 20.0):
    """Poll for what the server does on its own time (notice a dead client's socket); not a backoff."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def beat_until_free(coordinator: StoreCoordinator, worker: str, other: str):
    """``worker``'s beats until one finds ``other``'s life lock free (the roll), or None."""
    def check():
        roll = beat(coordinator, worker)
        return roll if not {p.worker: p.held for p in roll.peers}[other] else None
    return until(check)



def counted_out_by_its_connection(url: str, ca: StoreCoordinator, cb: StoreCoordinator, a: str, b: str) -> None:
    """a and b beat and count each other; then the server drops a's life connection (as it would a
    dead host's), and b counts a out at its next beats."""
    import psycopg

    beat(ca, a)
    roll = beat(cb, b)
    seen_by_b = {p.worker for p in roll.peers if p.held}
    roll = beat(ca, a)  # b counted: a beat after b joined
    assert decide_share(a, roll.peers, roll.now, STALE_S, 0.1, {a, b}).wait_s == 0
    (pid,) = ca.store._c._lives[a].execute("SELECT pg_backend_pid()").fetchone()
    with psycopg.connect(url.split("?")[0], autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # a's life lock goes with its connection
    roll = beat_until_free(cb, b, a)
    assert roll and decide_share(b, roll.peers, roll.now, STALE_S, 0.1, seen_by_b).live == 1  # b counts a out


def rejoins_as_a_newcomer(ca: StoreCoordinator, cb: StoreCoordinator, a: str, b: str) -> None:
    """a's beat (its life lock held again): a newcomer, it waits until b has beaten again."""
    roll = beat(ca, a)
    assert {p.worker: p.held for p in roll.peers} == {a: True, b: True}
    decision = decide_share(a, roll.peers, roll.now, STALE_S, 0.1, {a, b})
    assert decision.wait_s > 0 and decision.live == 2
    beat(cb, b)
    roll = beat(ca, a)
    assert decide_share(a, roll.peers, roll.now, STALE_S, 0.1, {a, b}).wait_s == 0

VICTIM = """
import sys
from prelabel.store import open_store
from prelabel.worker.coordinator import StoreCoordinator
store = open_store(sys.argv[1])
StoreCoordinator(store).beat(sys.argv[2], "job-1", "key-1", 6000, 1e6, 60.0)
print("beating", flush=True)
sys.stdin.read()
"""


def test_a_sigkilled_workers_share_is_free_at_its_peers_next_beat(url):
    a, b = ids("host-a", "host-b")
    store = open_store(url)
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, url, a], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert victim.stdout.readline().strip() == "beating"
        peers = StoreCoordinator(store)
        roll = beat(peers, b)
        assert {p.worker: p.held for p in roll.peers} == {a: True, b: True}
        seen = {p.worker for p in roll.peers if p.held}
        assert decide_share(b, roll.peers, roll.now, STALE_S, 0.1, seen).share == pytest.approx(0.5)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        roll = beat_until_free(peers, b, a)
        assert roll, "the killed worker's life lock was never freed"
        assert roll.now - next(p.beat for p in roll.peers if p.worker == a) < STALE_S  # its beat is not stale...
        decision = decide_share(b, roll.peers, roll.now, STALE_S, 0.1, seen)
        assert decision.share == 1.0 and decision.live == 1 and decision.wait_s == 0  # ...yet it is gone
        # a worker that never saw the victim's lock held (it came later) counts it by its beats alone
        assert decide_share(b, roll.peers, roll.now, STALE_S, 0.1, set()).live == 2
    finally:
        if victim.poll() is None:
            victim.kill()
        store.close()


def test_a_worker_that_lost_its_life_connection_comes_back_as_a_newcomer(url):
    if not url.startswith("postgresql"):
        pytest.skip("SQLite has no life locks")
    a, b = ids("host-a", "host-b")
    first, second = open_store(url), open_store(url)
    try:
        ca, cb = StoreCoordinator(first), StoreCoordinator(second)
        counted_out_by_its_connection(url, ca, cb, a, b)
        rejoins_as_a_newcomer(ca, cb, a, b)  # it takes its lock again: b may have handed out its share
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # PostgreSQL's life connections
def test_a_worker_whose_beat_failed_after_it_took_its_life_lock_again_still_comes_back_as_a_newcomer(url):
    """The beat that takes the lock again fails (the store busy, or the server gone again) after the
    lock is taken: the next beat finds its lock held, and must still rejoin, or it would send at its
    share while its peers, which counted it out, send at theirs (up to 1.5x the ceiling)."""
    import psycopg

    a, b = ids("host-a", "host-b")
    first, second = open_store(url), open_store(url)
    try:
        ca, cb = StoreCoordinator(first), StoreCoordinator(second)
        counted_out_by_its_connection(url, ca, cb, a, b)
        write = first._c.commit_with

        def failing(query, /, **params):  # the beat's write, the first after the lock is taken again
            first._c.commit_with = write
            raise psycopg.OperationalError("the server is gone again")
        first._c.commit_with = failing
        with pytest.raises(StoreError):
            beat(ca, a)
        assert first._c.commit_with is write
        rejoins_as_a_newcomer(ca, cb, a, b)  # its lock is held already by now: a newcomer still
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # PostgreSQL's life connections
def test_two_worker_ids_of_one_32_bit_hash_each_hold_a_life_lock_of_their_own(url):
    """A life lock's key is 64 bits of the id's hash (a bigint advisory lock), so ids that
    share a 32-bit hash (one pair in ~2**16 workers' ids) are apart, and each is counted out by its own."""
    import psycopg

    import prelabel.store.postgres as pg

    nonce = uuid.uuid4().hex[:6]
    with psycopg.connect(url, autocommit=True) as admin:
        (pair,) = admin.execute(  # a birthday search: ~10 such pairs among 300,000 ids
            "SELECT array_agg(w) FROM (SELECT 'host-x:' || g || ':' || %s AS w FROM generate_series(1, 300000) g) s "
            "GROUP BY hashtext(w) HAVING count(*) > 1 LIMIT 1", (nonce,)).fetchone()
    a, b = pair[:2]
    first, second = open_store(url), open_store(url)
    try:
        assert first.worker_hold_life(a) is True and second.worker_hold_life(b) is True
        assert first.workers_life_held([a, b]) == {a: True, b: True}
        second.worker_drop_life(b)
        assert first.workers_life_held([a, b]) == {a: True, b: False}
        with psycopg.connect(url, autocommit=True) as admin:  # the key's halves, as pg_locks shows a bigint
            (key,) = admin.execute("SELECT hashtextextended(%s, %s)", (a, pg._LIFE_SEED)).fetchone()
            shown = admin.execute("SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' "
                                  "AND objsubid = 1 AND granted AND pid = %s",
                                  (first._c._lives[a].info.backend_pid,)).fetchall()
        assert shown == [((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)]
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # PostgreSQL's life connections
def test_a_life_check_waits_about_a_beat_for_a_connection_of_the_pool(url):
    a, = ids("host-a")
    store = open_store(url)  # its other calls wait STORE_BUSY_TIMEOUT_S (30 s) for a connection
    pool = store._c.pool
    taken = [pool.getconn() for _ in range(pool.max_size)]  # the store's other threads have them all
    try:
        started = time.monotonic()
        with pytest.raises(StoreError):
            store.workers_life_held([a])
        assert time.monotonic() - started < 5
    finally:
        for conn in taken:
            pool.putconn(conn)
        store.close()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # PostgreSQL's life connections
def test_a_life_connection_being_made_does_not_hold_up_the_other_workers_beats(url, monkeypatch):
    import psycopg

    a, b = ids("host-a", "host-b")
    store = open_store(url)
    connect, entered, release = psycopg.connect, threading.Event(), threading.Event()

    def slow(*args, **kwargs):  # a server slow to answer (libpq waits up to LIFE_CONNECT_S)
        entered.set()
        release.wait(10)
        return connect(*args, **kwargs)

    try:
        assert store.worker_hold_life(a) is True
        monkeypatch.setattr(psycopg, "connect", slow)
        connecting = threading.Thread(target=store.worker_hold_life, args=(b,))
        connecting.start()
        assert entered.wait(10)
        started = time.monotonic()
        assert store.worker_hold_life(a) is False  # a's beat checks its own lock meanwhile
        assert time.monotonic() - started < 2
        release.set()
        connecting.join(10)
        assert store.workers_life_held([a, b]) == {a: True, b: True}
    finally:
        release.set()
        store.close()


@pytest.mark.parametrize("url", ["postgres"], indirect=True)  # PostgreSQL's life connections
def test_both_ends_of_a_life_connection_probe_a_silent_peer_within_seconds(url):
    """A host that died (or whose network did) sends no FIN: without keepalives the server holds its
    session, and its life lock, for the OS's default (2 hours), and the worker its dead connection."""
    from prelabel.config import LIFE_KEEPALIVE_COUNT, LIFE_KEEPALIVE_IDLE_S, LIFE_KEEPALIVE_INTERVAL_S

    a, = ids("host-a")
    store = open_store(url)
    try:
        store.worker_hold_life(a)
        conn = store._c._lives[a]
        settings = (LIFE_KEEPALIVE_IDLE_S, LIFE_KEEPALIVE_INTERVAL_S, LIFE_KEEPALIVE_COUNT)
        client = conn.info.get_parameters()
        assert client["keepalives"] == "1"
        assert tuple(int(client[f"keepalives_{name}"]) for name in ("idle", "interval", "count")) == settings
        assert int(client["tcp_user_timeout"]) <= 1000 * 10
        server = conn.execute("SELECT current_setting('tcp_keepalives_idle'), "
                              "current_setting('tcp_keepalives_interval'), "
                              "current_setting('tcp_keepalives_count')").fetchone()
        assert tuple(map(int, server)) == settings  # the server's end (the URL is TCP: not a Unix socket)
        assert LIFE_KEEPALIVE_IDLE_S + LIFE_KEEPALIVE_INTERVAL_S * LIFE_KEEPALIVE_COUNT <= 10  # seconds, not hours
    finally:
        store.close()

def test_a_worker_that_leaves_lets_its_life_lock_go(url):
    a, b = ids("host-a", "host-b")
    first, second = open_store(url), open_store(url)
    try:
        ca, cb = StoreCoordinator(first), StoreCoordinator(second)
        beat(ca, a)
        roll = beat(cb, b)
        assert {p.worker: p.held for p in roll.peers} == {a: True, b: True}
        ca.leave(a)
        roll = beat(cb, b)
        assert [p.worker for p in roll.peers] == [b]
        assert second.workers_life_held([a, b]) == {a: False, b: True}
        assert first._c._lives == {}  # its connection (SQLite: its descriptor) closed
    finally:
        first.close()
        second.close()


def test_two_workers_of_one_process_hold_life_locks_of_their_own(tmp_path):
    # one process, one store file: a lock of one must not count as the other's, nor die with the other's leave
    a, b = ids("host-a", "host-b")
    first, second = open_store(str(tmp_path / "prelabel.db")), open_store(str(tmp_path / "prelabel.db"))
    try:
        assert first.worker_hold_life(a) is True and first.worker_hold_life(a) is False
        assert second.workers_life_held([a, b]) == {a: True, b: False}
        assert second.worker_hold_life(b) is True
        first.worker_drop_life(a)
        assert second.workers_life_held([a, b]) == {a: False, b: True}
    finally:
        first.close()
        second.close()
    memory = open_store(":memory:")
    try:
        assert memory.worker_hold_life(a) is None  # no file to lock: the beats alone count
    finally:
        memory.close()


@pytest.mark.skipif(not sqlite_store._OFD, reason="no open-file-description locks here: no life-lock file")
def test_the_life_lock_file_has_the_stores_permission_bits_whatever_this_workers_umask(tmp_path):
    """Workers of several users share a store its owner made group-writable: the life-lock file must
    be theirs to lock too (as SQLite's own -wal and -shm files are), or they go by beats alone."""
    path = tmp_path / "prelabel.db"
    open_store(str(path)).close()
    path.chmod(0o664)
    a, b = ids("host-a", "host-b")
    umask = os.umask(0o077)  # a worker of a user whose files are private by default
    try:
        store = open_store(str(path))
        try:
            assert store.worker_hold_life(a) is True
            assert stat.S_IMODE(os.stat(f"{path}{sqlite_store.LIFE_SUFFIX}").st_mode) == 0o664
        finally:
            store.close()
        os.chmod(f"{path}{sqlite_store.LIFE_SUFFIX}", 0o600)  # made by an earlier version: its owner's worker mends it
        store = open_store(str(path))
        try:
            assert store.worker_hold_life(b) is True
            assert stat.S_IMODE(os.stat(f"{path}{sqlite_store.LIFE_SUFFIX}").st_mode) == 0o664
        finally:
            store.close()
    finally:
        os.umask(umask)


@pytest.mark.skipif(not sqlite_store._OFD, reason="no open-file-description locks here: no life-lock file")
def test_a_worker_that_cannot_open_the_life_lock_file_says_so_once_and_goes_by_its_beats(tmp_path, caplog):
    path = tmp_path / "prelabel.db"
    (tmp_path / f"prelabel.db{sqlite_store.LIFE_SUFFIX}").mkdir()  # a folder: not even root opens it to write
    a, b = ids("host-a", "host-b")
    store = open_store(str(path))
    try:
        coordinator = StoreCoordinator(store)
        with caplog.at_level(logging.INFO, logger="prelabel.store.sqlite"):
            for _ in range(3):
                roll = beat(coordinator, a)
                assert [p.held for p in roll.peers] == [None]  # the beats alone count
            assert store.workers_life_held([a, b]) is None
        said = [r for r in caplog.records if "life lock" in r.getMessage()]
        assert len(said) == 1 and "prelabel.db-lives" in said[0].getMessage()
    finally:
        store.close()
