"""The embedded store: SQLite in WAL mode, safe for several worker processes on one host.

Every multi-row change runs in one ``BEGIN IMMEDIATE`` transaction: two workers never lease the same
item, and a result and its usage are committed together, so a crash loses no finished work; the
worker writes each answer to the cache as it arrives, so a crash pays again only for what was in flight.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sqlite3
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from ..config import STORE_BUSY_TIMEOUT_S
from ..errors import InputError, JobExists, StorageError
from ..queue.owners import worker_id
from ..redact import redact, redact_error
from .base import IngestState, InputErrorRow, ItemResult, JobRecord, LeasedItem, ReviewRow, RunStats, SpoolRecord, UsageRow

_QUERY = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load_queries() -> dict[str, str]:
    text = resources.files(__package__).joinpath("sqlite.sql").read_text(encoding="utf-8")
    parts = _QUERY.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


Q = _load_queries()
NO_ITEM = -1  # the usage ledger's seq for spending that belongs to no item
_INGEST_BATCH = 5000
_INGEST_BEAT_S = 1.0
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
    """What an SQLite error means for the person running prelabel, or None for one that is a bug."""
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


def _translated(method):
    """SQLite errors a user can act on leave the store as ``StorageError`` (one line: path, problem, fix)."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.Error as e:
                raise (storage_error(self.path, e, self.busy_timeout_s) or e) from e
        return stream

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as e:
            raise (storage_error(self.path, e, self.busy_timeout_s) or e) from e
    return call


def _each_public_method_translated(cls):
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _translated(member))
    return cls


def _job(row: tuple) -> JobRecord:
    return JobRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                     row[10], bool(row[11]))


@_each_public_method_translated
class SQLiteStore:
    def __init__(self, path: str | Path, busy_timeout_s: float = STORE_BUSY_TIMEOUT_S) -> None:
        self.path, self.busy_timeout_s = str(path), busy_timeout_s
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(Path(self.path).parent, f"cannot create the store's folder ({e.strerror})",
                                   "create it (writable by this user) or choose another --db") from e
        # One connection per thread (the worker commits from a thread of its own, so that waiting
        # for another process's lock never stalls its event loop); this one is the opening thread's.
        self._local = threading.local()
        self._others: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._others_lock = threading.Lock()
        try:
            self._main = self._connect()
            self._local.db = self._main
            self._open()
        except sqlite3.Error as e:
            self.close()
            raise (storage_error(self.path, e, busy_timeout_s) or e) from e
        except StorageError:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        return db

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            if self.path == ":memory:":
                return self._main  # one database only: callers must not use it from two threads at once
            db = self._local.db = self._connect()
            with self._others_lock:  # close the connections of threads that have ended
                live = [(t, c) for t, c in self._others if t.is_alive()]
                for thread, connection in self._others:
                    if not thread.is_alive():
                        connection.close()
                self._others = live + [(threading.current_thread(), db)]
        return db

    def _open(self) -> None:
        """Check the file is prelabel's store (or empty), then bring its schema up to date."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not tables & _OWN_TABLES:
            shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StorageError(self.path, f"a SQLite database, but not prelabel's (its tables: {shown})", _CHECK_DB)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(Q["schema"])
        self._migrate()

    def verify(self) -> None:
        """Read every page (``PRAGMA quick_check``): damage anywhere in the file is found now, not
        half-way through a run. About 0.6 s for an 800 MB store."""
        rows = [row[0] for row in self._db.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            lines = [line for row in rows for line in row.splitlines() if line.strip() and not line.startswith("***")]
            first = lines[0] if lines else "no detail"
            more = f", and {len(lines) - 1} more" if len(lines) > 1 else ""
            raise StorageError(self.path, f"the database is damaged (quick_check: {first}{more})", _DAMAGED_FIX)

    def _migrate(self) -> None:
        """Bring a store made by an earlier version up to this schema, once, in one transaction
        (checked again inside it: two processes may open an old store at once)."""
        if "kind" not in self._item_columns():  # before drafts had their own table
            with self._tx():
                if "kind" not in self._item_columns():
                    self._script("migrate_1")
        if "inputs" not in self._columns("spool"):  # before failed spool files were retried
            with self._tx():
                if "inputs" not in self._columns("spool"):
                    self._script("migrate_2")
        if "simulated" not in self._columns("jobs"):  # before a --simulate job was marked as one
            with self._tx():
                if "simulated" not in self._columns("jobs"):
                    self._script("migrate_simulated")
        if "cached_prompt_tokens" not in self._columns("usage"):  # before prompt caching was billed
            with self._tx():
                if "cached_prompt_tokens" not in self._columns("usage"):
                    self._script("migrate_cached_prompt_tokens")
        self._script("indexes")
        self._script("reviews_schema")  # issue 13: review tables, created where missing

    def _item_columns(self) -> set[str]:
        return self._columns("items")

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}

    def _script(self, name: str) -> None:
        for statement in Q[name].split(";"):
            if statement.strip():
                self._db.execute(statement)

    def close(self) -> None:
        with self._others_lock:
            others, self._others = self._others, []
        for _, connection in others:
            connection.close()
        if hasattr(self, "_main"):
            self._main.close()

    def _tx(self):
        return _Transaction(self._db)

    # jobs ---------------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._db.execute(Q["get_job"], (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self) -> list[JobRecord]:
        return [_job(row) for row in self._db.execute(Q["list_jobs"])]

    def create_job(self, job: JobRecord, items: Iterable, owner: str | None = None) -> int:
        """Claim the job, stream its items in (``RawItem`` or ``InputError`` values), open it to workers.

        The job row goes in first, as ``ingesting``, with its reader ``owner``: a second submitter of
        the same job (two cron ticks on one spool file) fails at once with ``JobExists`` instead of
        racing this one, and workers do not see the job until every item is in. Items go in in
        batches, each its own transaction with the place reached in the input, so memory stays flat
        and a reader killed half-way leaves a place to go on from (``continue_ingest``). Returns
        the number of items stored (duplicates excluded).
        """
        owner = owner or worker_id()
        now = time.time()
        try:
            with self._tx():
                self._db.execute(Q["insert_job"], (job.id, job.name, json.dumps(job.spec), job.job_file,
                                                   job.input_sha256, job.prompt_version, now, now, job.simulated))
                self._db.execute(Q["insert_ingest"], (job.id, owner, now))
        except sqlite3.IntegrityError:
            raise JobExists(job.id) from None
        return self.continue_ingest(job.id, owner, items, 0)

    def continue_ingest(self, job_id: str, owner: str, items: Iterable, next_seq: int) -> int:
        """Store the input entries of a job ``owner`` reads (from where the last batch ended), then
        open the job to workers. Raises ``JobExists`` if another reader has taken the job over."""
        seq, stored, batch, line = next_seq, 0, [], None
        flushed = time.monotonic()

        def flush(last: bool) -> int:
            added = 0
            with self._tx():
                if line is None:  # nothing read in this pass: the claim must still be ours
                    row = self._db.execute(Q["get_ingest"], (job_id,)).fetchone()
                    ours = row is not None and row[0] == owner
                else:
                    ours = self._db.execute(Q["ingest_progress"], (line, seq, time.time(), job_id, owner)).rowcount
                if not ours:
                    raise JobExists(job_id)  # taken over: what this reader holds is not to be stored
                for entry in batch:
                    if isinstance(entry, InputError):
                        self._db.execute(Q["insert_input_error"], (job_id, entry.line, entry.field, entry.reason))
                        continue
                    position, item = entry
                    if self._db.execute(Q["insert_item"], (job_id, position, item.item_id, item.line,
                                                           item.text)).rowcount:
                        added += 1
                    else:
                        self._db.execute(Q["insert_input_error"], (
                            job_id, item.line, None, f"duplicate id {item.item_id!r}: kept the first"))
                if last:
                    self._db.execute(Q["finish_ingest"], (job_id,))
                    self._db.execute(Q["ingest_done"], (time.time(), job_id))
            batch.clear()
            return added

        for entry in items:
            if isinstance(entry, InputError):
                batch.append(entry)
            else:
                batch.append((seq, entry))
                seq += 1
            line = entry.line
            # A batch is committed when full, or after a second: the beat says the reader is alive.
            if len(batch) >= _INGEST_BATCH or time.monotonic() - flushed >= _INGEST_BEAT_S:
                stored += flush(False)
                flushed = time.monotonic()
        stored += flush(True)
        return stored

    def ingest_state(self, job_id: str) -> IngestState | None:
        """Who reads a job's input in and how far it got; None once it is all in."""
        row = self._db.execute(Q["get_ingest"], (job_id,)).fetchone()
        if row is None:
            job = self.get_job(job_id)
            if job is None or job.status != "ingesting":
                return None
            with self._tx():  # left half-read by an earlier version: where it got to is in its rows
                self._script("migrate_ingest")
            row = self._db.execute(Q["get_ingest"], (job_id,)).fetchone()
        return IngestState(*row) if row else None

    def claim_ingest(self, job_id: str, owner: str, dead_owner: str | None, now: float) -> bool:
        """Take over reading a job's input from a reader found dead; False if another took it first."""
        return self._db.execute(Q["claim_ingest"], (owner, now, job_id, dead_owner)).rowcount == 1

    def release_ingest(self, job_id: str, owner: str) -> None:
        self._db.execute(Q["release_ingest"], (job_id, owner))

    def discard_job(self, job_id: str) -> None:
        """Remove a job whose submission died half-way, so that it can be submitted again."""
        with self._tx():
            for statement in Q["discard_job"].split(";"):
                if statement.strip():
                    self._db.execute(statement, (job_id,))

    def update_job_spec(self, job_id: str, spec: dict, job_file: str | None) -> None:
        self._db.execute(Q["update_job_spec"], (json.dumps(spec), job_file, time.time(), job_id))

    def set_status(self, job_id: str, status: str) -> None:
        self._db.execute(Q["set_status"], (status, time.time(), job_id))

    def runnable_jobs(self, now: float) -> list[str]:
        return [row[0] for row in self._db.execute(Q["runnable_jobs"], (now,))]

    # items --------------------------------------------------------------------------------------

    def lease(self, job_id: str, owner: str, limit: int, now: float, lease_s: float,
              units: int = 0) -> list[LeasedItem]:
        """Up to ``limit`` items of labelling work (expired leases first, then the oldest input items
        and variants to re-check), and besides them up to ``units`` augment units."""
        with self._tx():
            rows = self._db.execute(Q["lease"], (owner, now + lease_s, job_id, job_id, now, limit, job_id, units,
                                                 job_id, limit, job_id, limit, limit + units)).fetchall()
        return sorted((LeasedItem(*row) for row in rows), key=lambda item: item.seq)

    def renew(self, owner: str, now: float, lease_s: float) -> None:
        with self._tx():
            self._db.execute(Q["renew"], (now + lease_s, owner))
            self._db.execute(Q["renew_holds"], (now + lease_s, owner))

    def release(self, owner: str) -> int:
        with self._tx():
            self._db.execute(Q["drop_holds"], (owner,))
            return self._db.execute(Q["release"], (owner,)).rowcount

    def hold_budget(self, job_id: str, owner: str, tokens: int, cost: float, max_tokens: int | None,
                    max_cost: float | None, now: float, lease_s: float) -> tuple[int, float]:
        """Grant up to (tokens, cost) of the job's budget to ``owner``, atomically across workers:
        spent + every live hold never passes a cap. A hold expires with its owner's leases."""
        with self._tx():
            spent_tokens, spent_cost = self._db.execute(Q["job_spent"], (job_id,)).fetchone()
            held_tokens, held_cost = self._db.execute(Q["holds"], (job_id, now)).fetchone()
            if max_tokens is not None:
                tokens = max(0, min(tokens, max_tokens - spent_tokens - held_tokens))
            if max_cost is not None:
                cost = max(0.0, min(cost, max_cost - spent_cost - held_cost))
            self._db.execute(Q["add_hold"], (job_id, owner, tokens, cost, now + lease_s))
        return tokens, cost

    def reclaim(self, owners: Iterable[str]) -> int:
        owners = list(owners)
        with self._tx():
            for owner in owners:
                self._db.execute(Q["drop_holds"], (owner,))
            return sum(self._db.execute(Q["release"], (owner,)).rowcount for owner in owners)

    def leased_owners(self) -> list[str]:
        return [row[0] for row in self._db.execute(Q["leased_owners"])]

    def complete(self, job_id: str, owner: str, results: list[ItemResult],
                 side_usage: Iterable[UsageRow] = ()) -> None:
        """Results, and usage that belongs to no item (``side_usage``: embeddings), in one transaction."""
        now = time.time()
        finished, released, usage, cache, drafts, cleared, spawned, uncache = [], [], [], [], [], [], [], []
        spent = [0, 0.0]  # tokens, cost

        def bill(seq: int, rows: Iterable[UsageRow]) -> None:
            for u in rows:
                usage.append((job_id, seq, now, u.model, u.prompt_tokens, u.completion_tokens, u.cost_usd,
                              int(u.cached), u.cached_prompt_tokens))
                if not u.cached:
                    spent[0] += u.prompt_tokens + u.completion_tokens
                    spent[1] += u.cost_usd

        for r in results:
            if r.release:
                released.append((job_id, r.seq, owner))
            else:
                summary = json.dumps(redact_error(r.summary), ensure_ascii=False) if r.summary is not None else None
                finished.append((r.state, r.priority, summary, job_id, r.seq, owner))
                cleared.append((job_id, r.seq, job_id, r.seq, owner))
                drafts.extend((job_id, r.seq, idx, record["review_priority"],
                               json.dumps(redact_error(record), ensure_ascii=False),
                               job_id, r.seq, owner) for idx, record in enumerate(r.records))
                spawned.extend((r.seq, s) for s in r.spawn)
            bill(r.seq, r.usage)
            cache.extend((key, json.dumps(completion, ensure_ascii=False), now) for key, completion in r.cache)
            uncache.extend((key,) for key in r.uncache)
        bill(NO_ITEM, side_usage)
        tokens, cost = spent
        with self._tx():
            # Drafts and children first: they are written only while the lease is still ours.
            self._db.executemany(Q["clear_drafts"], cleared)
            self._db.executemany(Q["insert_draft"], drafts)
            if spawned:
                self._spawn(job_id, owner, spawned)
            self._db.executemany(Q["finish_item"], finished)
            self._db.executemany(Q["unlease_item"], released)
            self._db.executemany(Q["insert_usage"], usage)
            self._db.executemany(Q["insert_cache"], cache)
            self._db.executemany(Q["delete_cache"], uncache)
            self._db.execute(Q["add_spent"], (tokens, cost, now, job_id))
            self._db.execute(Q["spend_hold"], (tokens, cost, job_id, owner))  # held -> spent

    def _spawn(self, job_id: str, owner: str, spawned: list) -> None:
        """New items made from finished ones (augmentation), in the finishing transaction: a crash
        before it commits makes none, and a retaken parent makes the same ids again, kept once."""
        seq = self._db.execute(Q["next_seq"], (job_id,)).fetchone()[0]
        for parent, child in spawned:
            owned = self._db.execute(Q["owns_item"], (job_id, parent, owner)).fetchone()
            if owned is None:
                continue
            payload = json.dumps(child.payload, ensure_ascii=False) if child.payload is not None else None
            if self._db.execute(Q["spawn_item"], (job_id, seq, child.item_id, child.text, child.kind, payload,
                                                  job_id, parent)).rowcount:
                seq += 1

    def stop_remaining(self, job_id: str) -> int:
        return self._db.execute(Q["stop_remaining"], (job_id,)).rowcount

    def resume_stopped(self, job_id: str) -> int:
        return self._db.execute(Q["resume_stopped"], (job_id,)).rowcount

    def requeue(self, job_id: str, seqs: Iterable[int]) -> int:
        """Failed items back to pending (an outage caught them: they did not fail on their own)."""
        with self._tx():
            n = 0
            for seq in seqs:
                self._db.execute(Q["requeue_drafts"], (job_id, seq, job_id, seq))
                n += self._db.execute(Q["requeue_item"], (job_id, seq)).rowcount
            return n

    def retry_failed(self, job_id: str) -> int:
        with self._tx():
            self._db.execute(Q["retry_drafts"], (job_id, job_id))
            return self._db.execute(Q["retry_failed"], (job_id,)).rowcount

    # reading ------------------------------------------------------------------------------------

    def counts(self, job_id: str) -> dict[str, int]:
        return dict(self._db.execute(Q["counts"], (job_id,)).fetchall())

    def kind_counts(self, job_id: str) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for kind, state, n in self._db.execute(Q["kind_counts"], (job_id,)):
            counts.setdefault(kind, {})[state] = n
        return counts

    def item_texts(self, job_id: str) -> Iterator[str]:
        """Every text in the job (items and variants), streamed over a connection of its own: the
        caller may read it in another thread while this one commits."""
        db = self._db if self.path == ":memory:" else sqlite3.connect(self.path, timeout=self.busy_timeout_s)
        try:
            cursor = db.execute(Q["item_texts"], (job_id, job_id, job_id))
            while page := cursor.fetchmany(1000):
                for (text,) in page:
                    yield text
        finally:
            if db is not self._db:
                db.close()

    def unit_results(self, job_id: str) -> Iterator[dict]:
        for (raw,) in self._db.execute(Q["unit_results"], (job_id,)):
            yield json.loads(raw)

    def flag_counts(self, job_id: str) -> dict[str, int]:
        return dict(self._db.execute(Q["flag_counts"], (job_id,)).fetchall())

    def origin_counts(self, job_id: str) -> list[tuple[str | None, bool, int]]:
        """Drafts per (endpoint, simulated): who answered the job."""
        return [(endpoint, bool(simulated), n)
                for endpoint, simulated, n in self._db.execute(Q["origin_counts"], (job_id,))]

    def variant_flag_counts(self, job_id: str) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for kind, flag, n in self._db.execute(Q["variant_flag_counts"], (job_id,)):
            counts.setdefault(kind, {})[flag] = n
        return counts

    def iter_records(self, job_id: str) -> Iterator[dict]:
        for raw in self.iter_record_json(job_id):
            yield json.loads(raw)

    def iter_record_json(self, job_id: str) -> Iterator[str]:
        """The records as stored: one JSON object each, on one line (drafts.jsonl is these)."""
        # A cursor of its own, read in pages: a million records never sit in memory at once.
        cursor = self._db.cursor()
        cursor.execute(Q["records"], (job_id,))
        while page := cursor.fetchmany(1000):
            for (raw,) in page:
                yield raw

    def input_errors(self, job_id: str) -> list[InputErrorRow]:
        return [InputErrorRow(*row) for row in self._db.execute(Q["input_errors"], (job_id,))]

    def usage_totals(self, job_id: str) -> dict:
        n, prompt, completion, cost, cached, prompt_cached = self._db.execute(Q["usage_totals"], (job_id,)).fetchone()
        # Tokens and cost are what was billed; answers from the cache cost nothing. Of the prompt
        # tokens, ``cached_prompt_tokens`` came from the provider's prompt cache (the cached price).
        return {"requests_billed": n - cached, "cached_answers": cached, "prompt_tokens": prompt,
                "cached_prompt_tokens": prompt_cached, "completion_tokens": completion,
                "cost_usd": round(cost, 6)}

    def add_run(self, job_id: str, owner: str, started: float, stats: RunStats) -> None:
        self._db.execute(Q["insert_run"], (job_id, owner, started, time.time(), stats.requests, stats.retries,
                                           stats.rate_limited, stats.server_errors, stats.timeouts,
                                           stats.cache_hits, stats.wall_s))

    def run_totals(self, job_id: str) -> dict:
        row = self._db.execute(Q["run_totals"], (job_id,)).fetchone()
        keys = ("runs", "requests", "retries", "rate_limited", "server_errors", "timeouts", "cache_hits", "wall_s")
        return dict(zip(keys, row))

    # cache --------------------------------------------------------------------------------------

    def cache_get(self, key: str) -> dict | None:
        row = self._db.execute(Q["get_cache"], (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def cache_put(self, entries: Iterable[tuple[str, dict]]) -> None:
        """Entries written on their own, not with an item's result: answers as they arrive, a job's
        example embeddings."""
        now = time.time()
        rows = [(key, json.dumps(value, ensure_ascii=False), now) for key, value in entries]
        with self._tx():
            self._db.executemany(Q["insert_cache"], rows)

    # reviews (issue 13) -------------------------------------------------------------------------

    def add_reviews(self, job_id: str, rows: Iterable[ReviewRow]) -> int:
        """Upsert, in one transaction: a row replaces the same reviewer's earlier one for that draft
        unless it is older. Returns the rows that changed."""
        now = time.time()
        params = [(job_id, r.draft_id, r.reviewer, r.verdict,
                   None if r.label is None else json.dumps(r.label, ensure_ascii=False),
                   r.updated_at, r.lead_time, r.origin, now) for r in rows]
        with self._tx():
            before = self._db.total_changes
            self._db.executemany(Q["upsert_review"], params)
            return self._db.total_changes - before

    def reviews(self, job_id: str) -> list[ReviewRow]:
        return [ReviewRow(draft_id, reviewer, verdict, None if label is None else json.loads(label), updated_at,
                          lead_time, origin)
                for draft_id, reviewer, verdict, label, updated_at, lead_time, origin
                in self._db.execute(Q["reviews"], (job_id,))]

    def add_samples(self, job_id: str, drafts: Iterable[tuple[str, str]]) -> None:
        """(draft id, purpose) pairs sent out for review; a draft keeps the purpose it was first drawn for,
        unless it is drawn for an audit later (the audit must stay uniform)."""
        now = time.time()
        with self._tx():
            self._db.executemany(Q["insert_sample"], [(job_id, d, purpose, now) for d, purpose in drafts])

    def samples(self, job_id: str) -> dict[str, str]:
        return dict(self._db.execute(Q["samples"], (job_id,)).fetchall())

    # spool --------------------------------------------------------------------------------------

    def spool_seen(self, path: str, sha256: str) -> bool:
        return self._db.execute(Q["spool_seen"], (path, sha256)).fetchone() is not None

    def spool_record(self, path: str, sha256: str, job_id: str | None, error: str | None,
                     inputs: dict | None = None) -> None:
        """The outcome of a spool file's content: recorded again (replaced) when it is retried."""
        self._db.execute(Q["spool_record"], (path, sha256, job_id, redact(error) if error else error,
                                             json.dumps(inputs) if inputs is not None else None, time.time()))

    def spool_entry(self, path: str, sha256: str) -> SpoolRecord | None:
        row = self._db.execute(Q["spool_entry"], (path, sha256)).fetchone()
        if row is None:
            return None
        return SpoolRecord(path, row[0], row[1], json.loads(row[2]) if row[2] else {})

    def spool_failures(self) -> list[SpoolRecord]:
        """Spool files whose latest content failed, with the error."""
        return [SpoolRecord(path, None, error, {}) for path, error, _ in self._db.execute(Q["spool_failures"])]


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
