"""The embedded store: SQLite in WAL mode, safe for several worker processes on one host.

Every multi-row change runs in one ``BEGIN IMMEDIATE`` transaction: two workers never lease the same
item, and a result and its usage are committed together, so a crash loses no finished work; the
worker writes each answer to the cache as it arrives, so a crash pays again only for what was in flight.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import InputError, JobExists
from ..redact import redact, redact_error
from .base import InputErrorRow, ItemResult, JobRecord, LeasedItem, RunStats, UsageRow

_QUERY = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load_queries() -> dict[str, str]:
    text = resources.files(__package__).joinpath("sqlite.sql").read_text(encoding="utf-8")
    parts = _QUERY.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


Q = _load_queries()
NO_ITEM = -1  # the usage ledger's seq for spending that belongs to no item
_INGEST_BATCH = 5000


def _job(row: tuple) -> JobRecord:
    return JobRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                     row[10])


class SQLiteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(Q["schema"])
        self._migrate()

    def _migrate(self) -> None:
        """Bring a store made by an earlier version up to this schema, once, in one transaction
        (checked again inside it: two processes may open an old store at once)."""
        if "kind" not in self._item_columns():  # before drafts had their own table
            with self._tx():
                if "kind" not in self._item_columns():
                    self._script("migrate_1")
        self._script("indexes")

    def _item_columns(self) -> set[str]:
        return {row[1] for row in self._db.execute("PRAGMA table_info(items)")}

    def _script(self, name: str) -> None:
        for statement in Q[name].split(";"):
            if statement.strip():
                self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def _tx(self):
        return _Transaction(self._db)

    # jobs ---------------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._db.execute(Q["get_job"], (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self) -> list[JobRecord]:
        return [_job(row) for row in self._db.execute(Q["list_jobs"])]

    def create_job(self, job: JobRecord, items: Iterable) -> int:
        """Claim the job, stream its items in (``RawItem`` or ``InputError`` values), open it to workers.

        The job row goes in first, as ``ingesting``: a second submitter of the same job (two cron
        ticks on one spool file) fails at once with ``JobExists`` instead of racing this one, and
        workers do not see the job until every item is in. Items go in in batches, each its own
        transaction, so memory stays flat. Returns the number of items stored (duplicates excluded).
        """
        now = time.time()
        try:
            with self._tx():
                self._db.execute(Q["insert_job"], (job.id, job.name, json.dumps(job.spec), job.job_file,
                                                   job.input_sha256, job.prompt_version, now, now))
        except sqlite3.IntegrityError:
            raise JobExists(job.id) from None
        seq, stored, batch = 0, 0, []

        def flush() -> int:
            added = 0
            with self._tx():
                for entry in batch:
                    if isinstance(entry, InputError):
                        self._db.execute(Q["insert_input_error"], (job.id, entry.line, entry.field, entry.reason))
                        continue
                    position, item = entry
                    if self._db.execute(Q["insert_item"], (job.id, position, item.item_id, item.line,
                                                           item.text)).rowcount:
                        added += 1
                    else:
                        self._db.execute(Q["insert_input_error"], (
                            job.id, item.line, None, f"duplicate id {item.item_id!r}: kept the first"))
                self._db.execute(Q["ingest_progress"], (time.time(), job.id))
            batch.clear()
            return added

        for entry in items:
            if isinstance(entry, InputError):
                batch.append(entry)
            else:
                batch.append((seq, entry))
                seq += 1
            if len(batch) >= _INGEST_BATCH:
                stored += flush()
        stored += flush()
        self.set_status(job.id, "queued")
        return stored

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
                              int(u.cached)))
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
        db = self._db if self.path == ":memory:" else sqlite3.connect(self.path, timeout=30.0)
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

    def iter_records(self, job_id: str) -> Iterator[dict]:
        # A cursor of its own, read in pages: a million records never sit in memory at once.
        cursor = self._db.cursor()
        cursor.execute(Q["records"], (job_id,))
        while page := cursor.fetchmany(1000):
            for (raw,) in page:
                yield json.loads(raw)

    def input_errors(self, job_id: str) -> list[InputErrorRow]:
        return [InputErrorRow(*row) for row in self._db.execute(Q["input_errors"], (job_id,))]

    def usage_totals(self, job_id: str) -> dict:
        n, prompt, completion, cost, cached = self._db.execute(Q["usage_totals"], (job_id,)).fetchone()
        # Tokens and cost are what was billed; answers from the cache cost nothing.
        return {"requests_billed": n - cached, "cached_answers": cached, "prompt_tokens": prompt,
                "completion_tokens": completion, "cost_usd": round(cost, 6)}

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

    # spool --------------------------------------------------------------------------------------

    def spool_seen(self, path: str, sha256: str) -> bool:
        return self._db.execute(Q["spool_seen"], (path, sha256)).fetchone() is not None

    def spool_record(self, path: str, sha256: str, job_id: str | None, error: str | None) -> None:
        self._db.execute(Q["spool_record"], (path, sha256, job_id, redact(error) if error else error, time.time()))


class _Transaction:
    """``BEGIN IMMEDIATE`` takes the write lock up front, so concurrent writers queue, not deadlock."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
