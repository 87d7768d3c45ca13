"""The store in PostgreSQL, for workers on several hosts: psycopg 3 and its connection pool.

The rules are ``manager.StoreManager``'s; ``postgres.sql`` says what each query locks. The schema is
created and migrated by the first process that connects: numbered migrations (``migration_N`` in
postgres.sql), applied under a transaction-scoped advisory lock, so two hosts starting at once apply
each one once. Connections come from a pool; a transaction keeps one connection for its thread until
it ends. A connection the server dropped (a restart) is replaced by the pool, and the call that lost it is
made again with backoff (``manager._translated``); past ``STORE_RECONNECT_S`` it fails with ``StorageError``.
"""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from ..config import (LIFE_CONNECT_S, LIFE_KEEPALIVE_COUNT, LIFE_KEEPALIVE_IDLE_S, LIFE_KEEPALIVE_INTERVAL_S,
                      STORE_BUSY_TIMEOUT_S, STORE_IDLE_TRANSACTION_S, WORKER_BEAT_WAIT_S)
from ..errors import StorageError
from . import redact_url
from .connector import load_queries, statements, unexpected
from .manager import StoreManager
from .upkeep import Upkeep

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _pyformat(sql: str) -> str:
    """``:name`` (the queries' style, sqlite3's) as psycopg's ``%(name)s``; ``::type`` casts stay."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


Q = {name: _pyformat(sql) for name, sql in load_queries("postgres.sql").items()}
MIGRATIONS = sorted((int(name.removeprefix("migration_")), name) for name in Q if name.startswith("migration_"))
_MIGRATION_LOCK = 0x7072656C6162656C  # "prelabel": the advisory lock migrations are applied under
_LIFE_SEED = 0x706C6976  # "pliv": the seed the workers' ids are hashed under, to their life locks' keys
_OWN_TABLES = {"jobs", "items", "prelabel_schema"}
_UNREACHABLE_FIX = ("check that the server runs and that --db (or $PRELABEL_DB) names it, then run the same "
                    "command again")
_POOLED_FIX = ("prelabel's workers need a session per connection (its advisory locks, settings and prepared "
               "statements live in the session): set pool_mode = session for this database in PgBouncer, or "
               "connect to PostgreSQL directly, then run the same command again")
_REFUSED_FIX = ("check the user and password in --db (or $PRELABEL_DB), or the server's pg_hba.conf (who may "
                "log in from this host, and how), then run the same command again")
# libpq's words for a login the server refused (at connect they come without a SQLSTATE)
_REFUSED_LOGIN = re.compile(r'role "[^"]*" does not exist|password authentication failed|no pg_hba\.conf entry'
                            r'|no password supplied')
_LOGIN_USER = re.compile(r'(?:role|user) "([^"]*)"')
_shown = redact_url  # the URL as messages show it: without its password


def _pooled_per_transaction(error: BaseException) -> bool:
    """The connection's session is not the one its statements were prepared in: psycopg prepares a
    query run often on a connection, and a pooler that hands each transaction to another server
    session (PgBouncer's ``pool_mode = transaction``) answers with another session's statements."""
    if isinstance(error, (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement)):
        return True  # 26000, 42P05: prelabel names no prepared statement of its own, psycopg does
    return (getattr(error, "sqlstate", None) == "08P01"  # "bind message supplies 1 parameters, but prepared ..."
            and "prepared statement" in str(error))


def _login_refused(error: BaseException) -> bool:
    """The server was reached and refused this login (28000, 28P01, or libpq's text of them at connect,
    which carries no SQLSTATE)."""
    if isinstance(error, (psycopg.errors.InvalidAuthorizationSpecification, psycopg.errors.InvalidPassword)):
        return True
    return isinstance(error, psycopg.OperationalError) and _REFUSED_LOGIN.search(str(error)) is not None


def _login_user(location: str, detail: str) -> str:
    """Whose login was refused: as the server names it, else as the URL does."""
    if (named := _LOGIN_USER.search(detail)) is None:
        try:
            user = urlsplit(location).username
        except ValueError:
            user = None
        return f"user {user!r}" if user else "the default user (the URL names none: this system user's name)"
    return f"user {named[1]!r}"


def storage_error(location: str, error: BaseException) -> StorageError | None:
    """What a psycopg error means for the person running prelabel, or None for one it does not know
    (a bug, most likely: it leaves the store as ``connector.unexpected``'s)."""
    detail = " ".join(str(error).split())
    if _pooled_per_transaction(error):
        return StorageError(location, f"the server's connections look pooled per transaction, as PgBouncer's "
                                      f"pool_mode = transaction does: a statement prepared in one session was "
                                      f"used in another ({detail})", _POOLED_FIX)
    if _login_refused(error):
        return StorageError(location, f"the server was reached and refused the login of "
                                      f"{_login_user(location, detail)} ({detail})", _REFUSED_FIX)
    if isinstance(error, psycopg.errors.DiskFull):
        return StorageError(location, f"the server's disk is full ({detail})",
                            "free space on the database server and run the same command again")
    if isinstance(error, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)):
        return StorageError(location, f"a lock was held too long ({detail})",
                            "let the other process finish and run the same command again", locked=True)
    if isinstance(error, (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)):
        return StorageError(location, f"the database cannot be written ({detail})",
                            "grant this user write access, or choose another --db")
    if isinstance(error, psycopg.errors.IdleInTransactionSessionTimeout):
        return StorageError(location, f"the server ended a transaction this process left idle for more than "
                                      f"{STORE_IDLE_TRANSACTION_S:g} s (it was stopped, or starved of CPU)",
                            "let it run (or give it CPU) and run the same command again")
    if isinstance(error, (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)):  # not the network
        return StorageError(location, f"the server aborted a transaction whose locks crossed another's ({detail})",
                            "run the same command again")
    if isinstance(error, psycopg.OperationalError) and (missing := re.search(r'database "([^"]+)" does not exist',
                                                                              detail)):
        return StorageError(location, f"the server answers, but it has no database {missing[1]!r}",
                            f"create it (`createdb {missing[1]}`, or CREATE DATABASE {missing[1]}) or name an "
                            "existing one in --db (or $PRELABEL_DB), then run the same command again")
    if isinstance(error, psycopg.OperationalError):  # refused, dropped (a restart), timed out, pool exhausted
        return StorageError(location, f"cannot reach the PostgreSQL server ({detail})", _UNREACHABLE_FIX)
    return None


def _configure(conn: psycopg.Connection) -> None:
    """Each pool connection: a transaction left open by a client that stopped (SIGSTOP, a paused VM)
    is ended by the server after ``STORE_IDLE_TRANSACTION_S``, with its locks. Else one stopped
    worker inside a commit holds the job row, and every other worker's commit waits on it for as
    long as it is stopped. A client that was only slow makes its call again (``disconnected``)."""
    conn.execute(f"SET idle_in_transaction_session_timeout = {int(STORE_IDLE_TRANSACTION_S * 1000)}")


class PostgresConnector:
    errors = (psycopg.Error,)
    integrity_errors = (psycopg.errors.UniqueViolation,)

    def __init__(self, url: str, busy_timeout_s: float = STORE_BUSY_TIMEOUT_S, max_size: int = 8) -> None:
        self.url, self.location, self.busy_timeout_s = url, _shown(url), busy_timeout_s
        self._local = threading.local()
        self._lives: dict[str, psycopg.Connection] = {}  # worker -> the connection holding its life lock
        self._lives_lock = threading.Lock()  # only around the dict: never held across a round trip
        self._closed = False
        self._migrate()  # on a connection of its own: an unreachable server fails here, at once
        # No check on checkout: it costs a round trip per call (0.13 -> 0.21 ms a read, measured), and a
        # connection the server dropped is discarded by the pool when it comes back broken.
        # Ready before the first call: a connection opened on demand costs the caller ~100 ms+ (on the
        # event loop, for the engine's cache look-ups). Three: the store thread, the loop, a stream.
        self.pool = ConnectionPool(url, min_size=3, max_size=max_size, kwargs={"autocommit": True},
                                   configure=_configure, timeout=busy_timeout_s, name="prelabel", open=True)
        try:
            self.pool.wait(timeout=busy_timeout_s)
        except BaseException:
            self.pool.close()
            raise
        self.upkeep = Upkeep(lambda: psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(busy_timeout_s))))

    def churned(self, rows: int) -> None:
        self.upkeep.churned(rows)

    def translate(self, error: BaseException) -> StorageError | None:
        return storage_error(self.location, error)

    # Life locks (prelabel.llm.shares): each on a connection of its own, outside the pool, so that
    # it lives exactly as long as the worker (or that connection). Each beat checks its worker's, and
    # every call is bounded: a pool connection by about a beat, a check down a dead path by the
    # keepalives' ~5 s, a new connection by libpq's least connect timeout (2 s).

    def hold_life(self, worker: str) -> bool | None:
        """Hold ``worker``'s life lock: True if it was taken now (first, or again after its connection
        died: peers may have counted the worker out meanwhile), False if it was held already, None if
        another session holds that key (two ids of one hash: this worker goes without one)."""
        with self._lives_lock:
            conn = self._lives.get(worker)
        if conn is not None:
            try:
                conn.execute(Q["life_check"])  # down a dead path: fails within the keepalives' bound
                return False
            except psycopg.OperationalError:
                with self._lives_lock:
                    if self._lives.get(worker) is conn:
                        del self._lives[worker]
                conn.close()
        conn = self._life_connection()  # outside the lock: other workers' beats do not wait on it
        try:
            (taken,) = conn.execute(Q["life_lock"], {"life_seed": _LIFE_SEED, "worker": worker}).fetchone()
            with self._lives_lock:
                if taken and not self._closed:
                    self._lives[worker] = conn
                    return True
        except BaseException:
            conn.close()
            raise
        conn.close()  # another session holds that key, or this store was closed meanwhile
        return None

    def _life_connection(self) -> psycopg.Connection:
        """A life connection, whose ends both see a dead peer within seconds, not the OS's hours: the
        server drops a dead worker's session (its lock with it) by its TCP keepalives, and the worker
        its connection to a dead server (or path) by libpq's; ``tcp_user_timeout`` bounds a check sent
        down a dead path (keepalives wait while a packet is unanswered). Over a Unix socket: no-ops."""
        idle, interval, count = LIFE_KEEPALIVE_IDLE_S, LIFE_KEEPALIVE_INTERVAL_S, LIFE_KEEPALIVE_COUNT
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=LIFE_CONNECT_S, keepalives=1,
                               keepalives_idle=idle, keepalives_interval=interval, keepalives_count=count,
                               tcp_user_timeout=1000 * (idle + interval * count))
        try:
            conn.execute(f"SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; "
                         f"SET tcp_keepalives_count = {count}")
        except BaseException:
            conn.close()
            raise
        return conn

    def drop_life(self, worker: str) -> None:
        """Let ``worker``'s life lock go (it has left: its row is gone first)."""
        with self._lives_lock:
            conn = self._lives.pop(worker, None)
        if conn is not None:
            conn.close()  # the session ends, and its lock with it

    def lives_held(self, workers: list[str]) -> dict[str, bool]:
        """Whether each of ``workers`` has its life lock held by some session now. Waits at most
        ``WORKER_BEAT_WAIT_S`` for a connection of the pool (a beat's bound, not the store's)."""
        with self.pool.connection(timeout=WORKER_BEAT_WAIT_S) as conn:
            rows = conn.execute(Q["lives_held"], {"life_seed": _LIFE_SEED, "workers": list(workers)}).fetchall()
        return dict(rows)

    def disconnected(self, error: BaseException) -> bool:
        """The connection broke or could not be made (a restart: 57P01 admin shutdown, 57P03 starting
        up, class 08, or no SQLSTATE at all: the socket; 25P03: the server ended a transaction this
        client left idle too long), as opposed to a lock or a full disk. Not a login refused, nor a
        pooler's session mixed up (08P01 too): trying again would meet the same answer."""
        if isinstance(error, psycopg.errors.IdleInTransactionSessionTimeout):
            return True
        if _pooled_per_transaction(error) or _login_refused(error):
            return False
        if not isinstance(error, psycopg.OperationalError):
            return False
        state = getattr(error, "sqlstate", None)
        return state is None or state.startswith(("08", "57P"))

    def recover(self) -> None:
        """The pool's idle connections went with the server: check them now (the broken are replaced)
        rather than fail one call each."""
        try:
            self.pool.check()
        except psycopg.Error:
            pass  # the server is not back yet: the next try waits for a connection

    def _migrate(self) -> None:
        """Apply the migrations this database lacks, one process at a time (the advisory lock ends
        with the transaction). A database with tables that are not prelabel's is refused."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.busy_timeout_s))) as conn:
            tables = {row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
            if tables and not tables & _OWN_TABLES:
                shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
                raise StorageError(self.location, f"a PostgreSQL database, but not prelabel's (its tables: {shown})",
                                   "check that --db (or $PRELABEL_DB) names prelabel's database")
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS prelabel_schema "
                             "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
                (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM prelabel_schema").fetchone()
                for version, name in MIGRATIONS:
                    if version > current:
                        for statement in statements(Q[name]):
                            conn.execute(statement)
                        conn.execute("INSERT INTO prelabel_schema VALUES (%s, extract(epoch FROM now()))", (version,))

    def schema_version(self) -> int:
        (version,) = self.one_sql("SELECT coalesce(max(version), 0) FROM prelabel_schema")
        return int(version)

    @contextmanager
    def transaction(self, wait_s: float | None = None):
        """BEGIN (with its lock and statement bounds, in the same message), and COMMIT at the end
        unless ``commit_with`` sent it with the transaction's last statements."""
        if getattr(self._local, "conn", None) is not None:  # already in one on this thread: join it
            yield
            return
        with self.pool.connection(timeout=wait_s) as conn:
            begin = "BEGIN"
            if wait_s is not None:  # for a lock, and each statement (the pool's wait was the connection's)
                ms = max(1, int(wait_s * 1000))
                begin += f"; SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = {ms}"
            conn.execute(begin)
            self._local.conn, self._local.committed = conn, False
            try:
                yield
                if not self._local.committed:
                    conn.execute("COMMIT")
            except BaseException:
                if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                    try:
                        conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass  # the connection is gone, and the transaction with it: the pool replaces it
                raise
            finally:
                self._local.conn = None

    def commit_with(self, query: str, /, **params) -> list[tuple]:
        """The transaction's last statements and its COMMIT, in one message (the simple protocol, the
        parameters bound here): the locks they take are taken and let go by the server alone, never
        held while this process runs on, or is stopped (SIGSTOP, a paused VM) between two of them.
        Returns the rows of the last statement that returns rows."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.committed:
            raise RuntimeError(f"commit_with({query!r}) outside a transaction, or after its commit")
        rows: list[tuple] = []
        with psycopg.ClientCursor(conn) as cur:
            cur.execute(";\n".join(statements(Q[query])) + "\n;\nCOMMIT", params)  # a last line's `--` ends there
            while True:
                if cur.description is not None:
                    rows = cur.fetchall()
                if not cur.nextset():
                    break
        self._local.committed = True
        return rows

    @contextmanager
    def _cursor(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            if self._local.committed:
                raise RuntimeError("a statement after its transaction's commit_with")
            with conn.cursor() as cur:
                yield cur
        else:
            with self.pool.connection() as conn, conn.cursor() as cur:
                yield cur

    def one_sql(self, sql: str, params=None) -> tuple | None:
        with self._cursor() as cur:
            return cur.execute(sql, params).fetchone()

    def one(self, query: str, /, **params) -> tuple | None:
        with self._cursor() as cur:
            return cur.execute(Q[query], params).fetchone()

    def all(self, query: str, /, **params) -> list[tuple]:
        with self._cursor() as cur:
            return cur.execute(Q[query], params).fetchall()

    def run(self, query: str, /, **params) -> int:
        with self._cursor() as cur:
            n = 0
            for statement in statements(Q[query]):
                cur.execute(statement, params)
                n += max(cur.rowcount, 0)
            return n

    def many(self, query: str, /, rows: list[dict]) -> int:
        """Once per row, as one pipeline; or, for a query with a ``_bulk`` form, one statement over
        arrays of each parameter. The cache's writes are bulk: their rows are the ones another
        worker waits on (the same request asked again by a takeover), and a client stopped inside
        a pipeline is never idle to the server, so its idle timeout would not free them."""
        if not rows:
            return 0
        with self._cursor() as cur:
            bulk = Q.get(f"{query}_bulk")
            if bulk is not None:
                cur.execute(bulk, {name: [row[name] for row in rows] for name in rows[0]})
            else:
                cur.executemany(Q[query], rows)
            return max(cur.rowcount, 0)

    def stream(self, query: str, /, **params) -> Iterator[tuple]:
        """A server-side cursor read in pages of 1,000, on a connection of its own. Its transaction
        is idle between pages for as long as the reader takes over one (an export, the variants'
        texts): it writes and locks nothing, so the idle timeout of the pool's connections is off."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            with conn.cursor(name="prelabel_stream") as cur:
                cur.itersize = 1000
                cur.execute(Q[query], params)
                yield from cur

    def verify(self) -> None:
        """The server keeps its own pages checked: reaching it and reading the schema is the check."""
        self.schema_version()

    def close(self) -> None:
        with self._lives_lock:
            self._closed = True
            lives, self._lives = list(self._lives.values()), {}
        for conn in lives:
            conn.close()
        upkeep = getattr(self, "upkeep", None)
        if upkeep is not None:  # before the pool: a vacuum under way is cancelled, not left running
            upkeep.close()
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


class PostgresStore(StoreManager):
    """The store in a PostgreSQL database (``postgresql://user@host:5432/db``)."""

    network_reads = True  # a round trip to the server: callers on an event loop make it off the loop

    def __init__(self, url: str, busy_timeout_s: float = STORE_BUSY_TIMEOUT_S) -> None:
        self.path = _shown(url)
        try:
            connector = PostgresConnector(url, busy_timeout_s)
        except psycopg.Error as e:
            raise (storage_error(self.path, e) or unexpected(self.path, e)) from e
        super().__init__(connector)
