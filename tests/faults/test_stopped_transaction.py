"""A worker stopped inside a store call (SIGSTOP, a paused VM) must not stop every other worker for
as long as it is stopped (issue 11's stop scenario, PostgreSQL). What its peers wait on, the job
row (a commit's spending) and a pace key's lock (a beat), is locked in the message that carries the
COMMIT, so a stopped worker never holds them. Where a lock is held over several statements still (a
commit that spawns items, a cache write's rows), the server ends a transaction left idle on its
client for ``STORE_IDLE_TRANSACTION_S``, with its locks; the stopped worker, resumed, makes its call
again (the lost session counts as a lost connection) and its result is committed once.

The stop is an event the test sets, not a sleep: a peer that waited on it fails the test after a
bound instead of hanging."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest

from prelabel.store import AUGMENT, Spawn, open_store
from tests.integration import test_store_contract as contract

pg_database, url = contract.pg_database, contract.url
job_record, raw_items, result, usage = contract.job_record, contract.raw_items, contract.result, contract.usage
A, B = "host-a:1:aaaaaa", "host-b:2:bbbbbb"
T0 = 1_000_000.0


END = "end"  # the stop point at the end of the outermost transaction's body: just before its COMMIT


class _StopsOnce:
    """A connector that stops once (until ``resume`` is set: a SIGSTOP as an event) right after its
    ``method`` ran ``query``, or, for ``END``, at the end of a transaction's body, before its COMMIT;
    not before it is ``armed`` (the test's own setup runs the same queries)."""

    def __init__(self, inner, method: str, query: str) -> None:
        self.inner, self.method, self.query, self.armed = inner, method, query, False
        self.inside, self.resume, self.depth = threading.Event(), threading.Event(), 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        def stops_once(query, /, *args, **params):
            out = attr(query, *args, **params)
            if query == self.query:
                self._stop()
            return out
        return stops_once

    def _stop(self) -> None:
        if self.armed and not self.inside.is_set():
            self.inside.set()
            self.resume.wait(30)

    @contextmanager
    def transaction(self, wait_s=None):
        self.depth += 1
        try:
            with self.inner.transaction(wait_s):
                yield
                if self.method == END and self.depth == 1:
                    self._stop()
        finally:
            self.depth -= 1


def _stopped_and_other(url, monkeypatch, method: str, query: str = "", idle_s: float = 0.3):
    """Two stores of one PostgreSQL database: the first stops once at (``method``, ``query``). The
    server's idle timeout is ``idle_s`` and reconnecting has no backoff to wait through."""
    if not url.startswith("postgresql"):
        pytest.skip("SQLite's write lock is the file's: a stopped writer is waited for up to the busy timeout")
    import prelabel.store.manager as manager
    import prelabel.store.postgres as postgres

    monkeypatch.setattr(postgres, "STORE_IDLE_TRANSACTION_S", idle_s)
    monkeypatch.setattr(manager, "reconnect_delay", lambda attempt: 0.0)
    stopped, other = open_store(url), open_store(url)
    faults = stopped._c = _StopsOnce(stopped._c, method, query)
    return stopped, other, faults


def _commit(store, owner, seq, key, outcome, spawn: bool = False):
    try:
        done = result(seq, usage=[usage(100, 5, 0.01)])
        if spawn:  # an augmentation unit: numbered under the job row, over several statements
            done.spawn = [Spawn(f"id{seq}~1", f"text {seq}", AUGMENT, {"step": 0})]
        store.complete("job-1", owner, [done])
        outcome[key] = time.monotonic()
    except Exception as e:  # noqa: BLE001 - reported by the asserts
        outcome[key] = e


def _commit_beside_a_stopped_one(stopped, other, faults, within_s: float, spawn: bool = False) -> dict:
    """Two items of one job, one leased to each store: the stopped store commits its own (and stops
    where ``faults`` says), then the other commits while it is stopped, within ``within_s``; then the
    stopped one resumes and ends its call. What each commit ended with (its time, or its error)."""
    outcome: dict[str, object] = {}
    other.create_job(job_record(), raw_items(2))
    other.lease("job-1", B, 1, T0, 600)
    stopped.lease("job-1", A, 1, T0, 600)
    first = threading.Thread(target=_commit, args=(stopped, A, 1, "stopped", outcome, spawn))
    faults.armed = True
    first.start()
    assert faults.inside.wait(20)
    started = time.monotonic()
    second = threading.Thread(target=_commit, args=(other, B, 0, "other", outcome))
    second.start()
    second.join(2 * within_s)
    assert isinstance(outcome.get("other"), float), outcome  # done while the first is still stopped
    assert outcome["other"] - started < within_s
    faults.resume.set()
    first.join(30)
    assert isinstance(outcome.get("stopped"), float), outcome  # its call made again, where it lost its session
    return outcome


# Where a commit can be stopped: after its fence (its items' rows locked), after its item writes, after
# its result is recorded (the last statement before its spending), and at the end of its body, just
# before its COMMIT: with the spending sent with the COMMIT, that is after it.
STOPS = [("all", "fence"), ("many", "finish_item"), ("run", "record_call"), (END, "")]


@pytest.mark.parametrize("method,query", STOPS, ids=[q or m for m, q in STOPS])
def test_a_worker_stopped_anywhere_in_a_commit_holds_nothing_its_peers_commits_need(url, monkeypatch, method, query):
    """The server's idle timeout is long here (30 s): the peer's commit is not merely freed by it,
    it never waits. Before the spending went with the COMMIT, a worker stopped between them held
    the job row, and every commit on the job waited for the timeout (a 0.7 s stall of the whole
    fleet, seen in the stop scenario)."""
    stopped, other, faults = _stopped_and_other(url, monkeypatch, method, query, idle_s=30.0)
    try:
        _commit_beside_a_stopped_one(stopped, other, faults, within_s=5)
        assert other.counts("job-1") == {"done": 2}
        assert other.get_job("job-1").spent_tokens == 210  # each result billed once
    finally:
        faults.resume.set()
        stopped.close()
        other.close()


def test_a_worker_stopped_in_a_commit_that_spawns_is_let_go_by_the_server(url, monkeypatch):
    """A commit that spawns items (augmentation) numbers them under the job row over several
    statements: a worker stopped there holds it until the server ends its idle transaction (here
    0.3 s), and, resumed, makes its call again on a new session: its result is committed once."""
    stopped, other, faults = _stopped_and_other(url, monkeypatch, "one", "lock_job")
    try:
        _commit_beside_a_stopped_one(stopped, other, faults, within_s=10, spawn=True)
        counts = other.counts("job-1")
        assert counts["done"] == 2 and sum(counts.values()) == 3  # the spawned unit numbered once
        assert other.get_job("job-1").spent_tokens == 210  # each result billed once
    finally:
        faults.resume.set()
        stopped.close()
        other.close()


def test_a_worker_stopped_in_a_beat_holds_nothing_its_peers_beats_need(url, monkeypatch):
    """A beat is one message with its COMMIT: the pace key's lock is the server's to take and let
    go. Before, a worker stopped inside its beat's five statements held it, and each peer's beat
    waited out its bound and failed until the server's idle timeout (here 30 s) ended that session."""
    stopped, other, faults = _stopped_and_other(url, monkeypatch, END, idle_s=30.0)
    got: dict[str, object] = {}

    def beat(store, worker):
        try:
            got[worker] = [p.worker for p in store.worker_beat(worker, "job-1", "key-1", 6000, 1e6, stale_s=5)[1]]
        except Exception as e:  # noqa: BLE001 - reported by the asserts
            got[worker] = e

    try:
        first = threading.Thread(target=beat, args=(stopped, A))
        faults.armed = True
        first.start()
        assert faults.inside.wait(20)
        beat(other, B)  # within the beat's own bound (WORKER_BEAT_WAIT_S), or it raises
        assert got[B] == [A, B], got
        faults.resume.set()
        first.join(30)
        assert got[A] == [A, B] or got[A] == [A], got
    finally:
        faults.resume.set()
        stopped.close()
        other.close()


def test_a_worker_stopped_inside_a_cache_write_does_not_hold_the_same_answers_write(url, monkeypatch):
    """A takeover asks a stopped worker's requests again, so its answers go to the cache under the
    stopped worker's keys, whose rows that worker may hold: the server ends its idle transaction and
    the takeover's write goes through; the stopped one, resumed, writes its own again. (The cache
    write is one statement: a client stopped inside a pipeline of them is never idle to the server.)"""
    stopped, other, faults = _stopped_and_other(url, monkeypatch, "many", "insert_cache")
    done: dict[str, object] = {}

    def put(store, key, answer):
        try:
            store.cache_put([("k-b", {"who": answer}), ("k-a", {"who": answer})])
            done[key] = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported by the asserts
            done[key] = e

    try:
        first = threading.Thread(target=put, args=(stopped, "stopped", "stopped"))
        faults.armed = True
        first.start()
        assert faults.inside.wait(20)
        second = threading.Thread(target=put, args=(other, "other", "takeover"))
        second.start()
        second.join(20)
        assert isinstance(done.get("other"), float), done  # written while the first is still stopped
        faults.resume.set()
        first.join(30)
        assert isinstance(done.get("stopped"), float), done
        assert other.cache_get("k-a") is not None and other.cache_get("k-b") is not None
    finally:
        faults.resume.set()
        stopped.close()
        other.close()
