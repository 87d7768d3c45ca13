"""Where the workers of several hosts find each other: the live workers of a pace key.

``Coordinator`` is the interface the worker's share loop (``sharing``) talks to; the store-backed one
(a ``workers`` table, on SQLite and PostgreSQL) implements it over the store's connection, and
``MemoryCoordinator`` does it in memory, for tests and for several runs in one process.
"""
from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from ..llm.shares import Peer


@dataclass(frozen=True, slots=True)
class Roll:
    """The live workers of one pace key as a beat found them, with the coordinator's clock then."""

    now: float
    peers: tuple[Peer, ...]


class Coordinator(Protocol):
    """Every method may raise ``StorageError``; each may be called from any thread."""

    def secret(self) -> bytes:
        """The key pace keys are hashed under: one per store, made at its creation, never shown."""

    def beat(self, worker: str, job_id: str, pace_key: str, rpm: float, tpm: float, stale_s: float) -> Roll:
        """Say ``worker`` runs ``job_id`` and sends under ``pace_key`` at a ceiling of ``rpm``/``tpm``,
        now (on the coordinator's clock; ``prelabel status`` lists the workers from these beats).
        Its ``joined`` stays as it was unless its last beat is ``stale_s`` old or more (it was
        counted out: it joins again now). Returns every worker of ``pace_key`` whose last beat is
        younger than ``stale_s``, itself included."""

    def leave(self, worker: str) -> None:
        """``worker`` sends no more: its share goes to the others at their next beat."""


class StoreCoordinator:
    """The coordinator of every worker of one store (SQLite or PostgreSQL): its ``workers`` table,
    on the database's clock. The secret is read once.

    Each worker also holds a life lock while it runs (``prelabel.llm.shares``; where the backend has
    one: PostgreSQL, and SQLite on Linux), taken before its first beat, and each roll says whose lock
    is held (``Peer.held``). A worker whose lock had to be taken again (its connection died: a
    restart) beats as a newcomer (``rejoin``: its ``joined`` is now): its peers may have counted it
    out meanwhile. Until such a beat lands: a beat that failed after the lock was taken leaves the
    next one to rejoin, though its lock is held by then."""

    def __init__(self, store) -> None:
        self.store = store
        self._secret: bytes | None = None
        self._lived: set[str] = set()  # workers that have held a life lock here
        self._rejoining: set[str] = set()  # workers whose lock was taken again, until a beat says so

    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = self.store.pace_secret()
        return self._secret

    def beat(self, worker: str, job_id: str, pace_key: str, rpm: float, tpm: float, stale_s: float) -> Roll:
        taken = self.store.worker_hold_life(worker)
        if taken and worker in self._lived:
            self._rejoining.add(worker)  # its old row's `joined` must not count it as sending
        if taken is not None:
            self._lived.add(worker)
        now, peers = self.store.worker_beat(worker, job_id, pace_key, rpm, tpm, stale_s,
                                            rejoin=worker in self._rejoining)
        self._rejoining.discard(worker)
        held = self.store.workers_life_held([p.worker for p in peers]) if taken is not None else None
        if held is not None:
            peers = [dataclasses.replace(p, held=held.get(p.worker, False)) for p in peers]
        return Roll(now, tuple(peers))

    def leave(self, worker: str) -> None:
        try:
            self.store.worker_leave(worker)  # its row first: a peer must not find it alive without a lock
        finally:
            self._lived.discard(worker)
            self._rejoining.discard(worker)
            self.store.worker_drop_life(worker)


class MemoryCoordinator:
    """In memory, with an injectable clock: workers in one process (tests) share through it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._workers: dict[str, tuple[str, Peer]] = {}  # worker -> (pace key, what it said)
        self.jobs: dict[str, str] = {}  # worker -> the job it runs
        self._lock = threading.Lock()

    def secret(self) -> bytes:
        return self._secret

    def beat(self, worker: str, job_id: str, pace_key: str, rpm: float, tpm: float, stale_s: float) -> Roll:
        with self._lock:
            now = self._clock()
            known = self._workers.get(worker)
            joined = known[1].joined if known is not None and now - known[1].beat < stale_s else now
            self._workers[worker] = (pace_key, Peer(worker, joined, now, rpm, tpm))
            self.jobs[worker] = job_id
            peers = tuple(peer for key, peer in self._workers.values()
                          if key == pace_key and now - peer.beat < stale_s)
            return Roll(now, peers)

    def leave(self, worker: str) -> None:
        with self._lock:
            self._workers.pop(worker, None)
            self.jobs.pop(worker, None)
