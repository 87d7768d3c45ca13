"""The embedded store: SQLite in WAL mode, safe for several worker processes on one host.

The connector of ``manager.StoreManager``'s rules: every transaction is ``BEGIN IMMEDIATE`` (it holds the
database's write lock from its start), so two workers never lease the same item, and a result and its
usage are committed together, so a crash loses no finished work; the worker writes each answer to the
cache as it arrives, so a crash pays again only for what was in flight. Opening migrates the stores
earlier versions made (their columns are checked, in one transaction per step).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no life locks, the beats alone count
    fcntl = None

from ..config import STORE_BUSY_TIMEOUT_S
from ..errors import StorageError
from .connector import load_queries, statements, unexpected
from .manager import StoreManager

log = logging.getLogger(__name__)
Q = load_queries("sqlite.sql")
_FULL_BELOW_BYTES = 1 << 20  # free space under this after an I/O error: the disk is full
_OWN_TABLES = {"jobs", "items"}  # a SQLite file with tables but neither of these belongs to something else

_SQLITE_CODES = {  # Python 3.10 has no sqlite_errorname: SQLite's messages for the codes that matter
    "database or disk is full": "SQLITE_FULL", "database is locked": "SQLITE_BUSY",
    "database table is locked": "SQLITE_LOCKED", "file is not a database": "SQLITE_NOTADB",
    "database disk image is malformed": "SQLITE_CORRUPT", "attempt to write a readonly database": "SQLITE_READONLY",
    "unable to open database file": "SQLITE_CANTOPEN", "disk I/O error": "SQLITE_IOERR",
}
_CHECK_DB = "check that --db (or $PRELABEL_DB) names prelabel's store"
_DAMAGED_FIX = ("restore it from a backup, or move it aside to start an empty store (`sqlite3 PATH .recover` "
                "may save what it holds)")


def _sqlite_code(e: sqlite3.Error) -> str | None:
    """The primary result code, e.g. ``SQLITE_IOERR`` for ``SQLITE_IOERR_WRITE``."""
    name = getattr(e, "sqlite_errorname", None)
    if name:
        return "_".join(name.split("_")[:2])
    return _SQLITE_CODES.get(str(e))


def _disk_full(path: str) -> bool:
    """SQLite reports a full disk as an I/O error when growing its WAL index or file fails."""
    try:
        fs = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < _FULL_BELOW_BYTES


def storage_error(path: str, e: sqlite3.Error, busy_timeout_s: float) -> StorageError | None:
    """What an SQLite error means for the person running prelabel, or None for one it does not know
    (a bug, most likely: it leaves the store as ``connector.unexpected``'s)."""
    code, detail = _sqlite_code(e), " ".join(str(e).split())
    if code == "SQLITE_FULL" or (code == "SQLITE_IOERR" and _disk_full(path)):
        return StorageError(path, "the disk is full", "free space there (or move the store with --db) and run "
                                                      "the same command again")
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return StorageError(path, f"the database is locked: another process held its write lock for more than "
                                  f"{busy_timeout_s:g} s", "let that process finish (or stop it) and run the same "
                                                            "command again; PRELABEL_BUSY_TIMEOUT_S sets the wait",
                            locked=True)
    if code == "SQLITE_NOTADB":
        return StorageError(path, "not a database (a SQLite file was expected)", _CHECK_DB)
    if code == "SQLITE_CORRUPT":
        return StorageError(path, f"the database is damaged ({detail})", _DAMAGED_FIX)
    if code == "SQLITE_CANTOPEN" and Path(path).is_dir():
        return StorageError(path, "a folder, not a database file", "name a file in it (e.g. prelabel.db) with --db")
    if code in ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"):
        return StorageError(path, f"the database cannot be opened for writing ({detail})",
                            "make it and its folder writable by this user, or choose another --db")
    if code == "SQLITE_IOERR":
        return StorageError(path, f"the disk failed ({detail})", "check the disk that holds it (free space, "
                                                                 "errors) and run the same command again")
    return None


LIFE_SUFFIX = "-lives"  # the workers' life locks: a file beside the store (empty: only its locks matter)
_OFD = hasattr(fcntl, "F_OFD_SETLK") if fcntl is not None else False
_FLOCK = "hhqqi4x"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks)


def _life_offset(worker: str) -> int:
    """Where a worker's byte is: 48 bits of its id's hash (two live ids of one hash: 2**-48 a pair)."""
    return int.from_bytes(hashlib.blake2b(worker.encode(), digest_size=6).digest(), "big")


def _flock(kind: int, offset: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0)


def _adapt(params: dict) -> dict:
    """Lists go to SQLite as JSON, read back with ``json_each``."""
    for k, v in params.items():
        if isinstance(v, (list, tuple)):
            return {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in params.items()}
    return params  # the common case: scalars only, passed as they are


class SQLiteConnector:
    """One connection per thread (the worker commits from a thread of its own, so that waiting for
    another process's lock never stalls its event loop). ``connect`` makes one (the store's, so a
    test can shrink the disk under it)."""

    errors = (sqlite3.Error,)
    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: str, busy_timeout_s: float, connect) -> None:
        self.location, self.busy_timeout_s, self._connect = path, busy_timeout_s, connect
        self._local = threading.local()
        self._lives: dict[str, int] = {}  # worker -> the descriptor holding its life lock
        self._said_no_life = False
        self._lives_lock = threading.Lock()
        self._others: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._others_lock = threading.Lock()
        self._main = None
        self._main = connect()
        self._local.db = self._main

    def translate(self, error: BaseException) -> StorageError | None:
        return storage_error(self.location, error, self.busy_timeout_s)

    # Life locks (prelabel.llm.shares): a SQLite store's workers share one machine, and a file lock
    # dies with its process. One byte each, at an offset hashed from the worker's id, of a file beside
    # the store (never the store itself: a process closing a descriptor of it would drop SQLite's own
    # locks). Open-file-description locks (Linux), so two workers of one process are apart too.

    def hold_life(self, worker: str) -> bool | None:
        """Hold ``worker``'s life lock: True if taken now, False if held already, None where there is
        none (no OFD locks here, an in-memory store, or another worker's id of the same hash)."""
        if not _OFD or self.location == ":memory:":
            return None
        with self._lives_lock:
            if worker in self._lives:
                return False
            try:
                fd = self._open_lives()
            except OSError as e:  # an optimisation only: without it, the beats alone count
                self._no_life(e)
                return None
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, _life_offset(worker)))
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):  # EACCES/EAGAIN: another id of that hash
                    self._no_life(e)
                return None
            self._lives[worker] = fd
            return True

    def _open_lives(self) -> int:
        """The life-lock file, made (where missing) with the store's own permission bits, as SQLite
        makes its -wal and -shm files: whoever may write the store may lock there too (a file made
        private to its creator left other users' workers to be counted by their beats alone)."""
        mode = os.stat(self.location).st_mode & 0o777  # the umask of whoever made the store, applied once
        fd = os.open(self.location + LIFE_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o777 != mode and st.st_uid == os.geteuid():  # this process's umask, or an older file
                os.fchmod(fd, mode)
        except OSError:
            pass  # another owner's file: its bits stand
        return fd

    def _no_life(self, error: OSError) -> None:
        """Said once per store, not at every beat (four a second)."""
        if not self._said_no_life:
            self._said_no_life = True
            log.info("no life lock beside the store (%s): peers count this worker out by its beats", error)

    def drop_life(self, worker: str) -> None:
        with self._lives_lock:
            fd = self._lives.pop(worker, None)
        if fd is not None:
            os.close(fd)  # the lock goes with its open file description

    def lives_held(self, workers: list[str]) -> dict[str, bool] | None:
        """Whether each of ``workers`` has its life lock held by some process now."""
        if not _OFD or self.location == ":memory:":
            return None
        try:
            fd = self._open_lives()
        except OSError as e:
            self._no_life(e)
            return None  # the beats alone count
        try:
            held = {}
            for worker in workers:
                probe = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, _life_offset(worker)))
                held[worker] = struct.unpack(_FLOCK, probe)[0] != fcntl.F_UNLCK
            return held
        except OSError:
            return None
        finally:
            os.close(fd)

    def disconnected(self, error: BaseException) -> bool:
        return False  # a file: there is no server to lose

    def recover(self) -> None:
        pass

    @property
    def db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            if self.location == ":memory:":
                return self._main  # one database only: callers must not use it from two threads at once
            db = self._local.db = self._connect()
            with self._others_lock:  # close the connections of threads that have ended
                live = [(t, c) for t, c in self._others if t.is_alive()]
                for thread, connection in self._others:
                    if not thread.is_alive():
                        connection.close()
                self._others = live + [(threading.current_thread(), db)]
        return db

    @contextmanager
    def transaction(self, wait_s: float | None = None):
        db = self.db
        if wait_s is None:
            with _Transaction(db):
                yield
            return
        db.execute(f"PRAGMA busy_timeout={max(1, int(wait_s * 1000))}")  # this connection's, until the end
        try:
            with _Transaction(db):
                yield
        finally:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")

    def one(self, query: str, /, **params) -> tuple | None:
        return self.db.execute(Q[query], _adapt(params)).fetchone()

    def all(self, query: str, /, **params) -> list[tuple]:
        return self.db.execute(Q[query], _adapt(params)).fetchall()

    def run(self, query: str, /, **params) -> int:
        params, db = _adapt(params), self.db
        block = statements(Q[query])
        if len(block) == 1:  # most queries: one statement (an input line's insert runs it a million times)
            return db.execute(block[0], params).rowcount
        return sum(db.execute(statement, params).rowcount for statement in block)

    def commit_with(self, query: str, /, **params) -> list[tuple]:
        """The transaction's last statements (its COMMIT follows at once, at the end of the block):
        the rows of the last that returns rows. A stopped writer holds the file's lock either way."""
        params, rows = _adapt(params), []
        for statement in statements(Q[query]):
            cursor = self.db.execute(statement, params)
            if cursor.description is not None:
                rows = cursor.fetchall()
        return rows

    def many(self, query: str, /, rows: list[dict]) -> int:
        if not rows:
            return 0
        db = self.db
        before = db.total_changes
        db.executemany(Q[query], rows)  # rows of scalars: nothing to adapt (the hot path of a commit)
        return db.total_changes - before

    def stream(self, query: str, /, **params) -> Iterator[tuple]:
        db = self.db if self.location == ":memory:" else sqlite3.connect(self.location, timeout=self.busy_timeout_s)
        try:
            cursor = db.execute(Q[query], _adapt(params))
            while page := cursor.fetchmany(1000):
                yield from page
        finally:
            if db is not self.db:
                db.close()

    def script(self, name: str) -> None:
        for statement in statements(Q[name]):
            self.db.execute(statement)

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def open(self) -> None:
        """Check the file is prelabel's store (or empty), then bring its schema up to date."""
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not tables & _OWN_TABLES:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StorageError(self.location, f"a SQLite database, but not prelabel's (its tables: {shown})",
                               _CHECK_DB)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(Q["schema"])
        self._migrate()

    def _migrate(self) -> None:
        """Bring a store made by an earlier version up to this schema, once, in one transaction
        (checked again inside it: two processes may open an old store at once)."""
        steps = [("items", "kind", "migrate_1"),  # before drafts had their own table
                 ("spool", "inputs", "migrate_2"),  # before failed spool files were retried
                 ("jobs", "simulated", "migrate_simulated"),  # before a --simulate job was marked as one
                 ("usage", "cached_prompt_tokens", "migrate_cached_prompt_tokens")]  # before prompt caching was billed
        for table, column, script in steps:
            if column not in self.columns(table):
                with self.transaction():
                    if column not in self.columns(table):
                        self.script(script)
        self.script("indexes")
        self.script("reviews_schema")  # issue 13: review tables, created where missing
        self.script("workers_schema")  # issue 11: the workers and the pace keys' secret, where missing
        self.script("batch_schema")  # issue 12: Batch API chunks, created where missing
        self.script("calls_schema")  # issue 11: calls' results, for their repeats, created where missing
        self.script("holds_schema")  # jobs a worker cannot run, with the reason, created where missing

    def verify(self) -> None:
        """Read every page (``PRAGMA quick_check``): damage anywhere in the file is found now, not
        half-way through a run. About 0.6 s for an 800 MB store."""
        rows = [row[0] for row in self.db.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            lines = [line for row in rows for line in row.splitlines() if line.strip() and not line.startswith("***")]
            first = lines[0] if lines else "no detail"
            more = f", and {len(lines) - 1} more" if len(lines) > 1 else ""
            raise StorageError(self.location, f"the database is damaged (quick_check: {first}{more})", _DAMAGED_FIX)

    def churned(self, rows: int) -> None:
        """Nothing to keep up: SQLite updates rows in place (no dead versions to vacuum)."""

    def close(self) -> None:
        with self._lives_lock:
            lives, self._lives = list(self._lives.values()), {}
        for fd in lives:
            os.close(fd)
        with self._others_lock:
            others, self._others = self._others, []
        for _, connection in others:
            connection.close()
        if self._main is not None:
            self._main.close()


class SQLiteStore(StoreManager):
    """The store in one SQLite file: the rules of ``StoreManager`` over ``SQLiteConnector``."""

    network_reads = False  # a local file: cheaper inline than a hop to a thread

    def __init__(self, path: str | Path, busy_timeout_s: float = STORE_BUSY_TIMEOUT_S) -> None:
        self.path, self.busy_timeout_s = str(path), busy_timeout_s
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(Path(self.path).parent, f"cannot create the store's folder ({e.strerror})",
                                   "create it (writable by this user) or choose another --db") from e
        connector = None
        try:
            connector = SQLiteConnector(self.path, busy_timeout_s, self._connect)
            super().__init__(connector)
            connector.open()
        except sqlite3.Error as e:
            if connector is not None:
                connector.close()
            raise (storage_error(self.path, e, busy_timeout_s) or unexpected(self.path, e)) from e
        except StorageError:
            if connector is not None:
                connector.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        return db

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (tests reach past the interface with it to fake an old store)."""
        return self._c.db


class _Transaction:
    """``BEGIN IMMEDIATE`` takes the write lock up front, so concurrent writers queue, not deadlock."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()  # a failed COMMIT (disk full) leaves the transaction open
                raise
        self._rollback()

    def _rollback(self) -> None:
        # SQLite may have rolled back already (a full disk, an I/O error): the first error is the one to see.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
