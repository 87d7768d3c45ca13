"""The store's rules, once for every backend: leasing, fencing late commits, budget holds, spawning, billing.

Each rule is a transaction of named queries over a ``Connector``; the SQL of each backend says what
it locks (SQLite: the whole database, from ``BEGIN IMMEDIATE``; PostgreSQL: ``FOR UPDATE SKIP LOCKED``
on the items a lease takes, ``FOR UPDATE`` on the job row for budget holds, spending and spawned
seqs, and on a commit's items in seq order), so the same rule is correct with one writer at a time
or with many. Locks are taken in one order (items by seq, then cache rows by key, then the job row, then
budget holds), so two writers never wait on each other in a cycle. The job row comes late because
every commit of every worker on a job takes it: taken first, it made their commits run one at a time
for their whole transaction; taken last, it is held for the spending and the COMMIT only.

Fencing: every lease bumps the item's ``attempts``, returned as ``LeasedItem.epoch``. A commit
writes, bills and spawns only the results whose item is still leased to the committer at the epoch
it carries (``ItemResult.epoch``; without one, the owner alone is checked): a worker whose lease
expired and was taken over (it was paused, partitioned, slow) and commits late is refused. What the
provider charged for a refused result is still billed, once, to no item (``LOST_LEASE``): the spend
and the caps count what was paid, and no item's cost is counted twice.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import secrets
import threading
import time
from typing import Iterable, Iterator

from ..config import INGEST_BATCH, INGEST_BEAT_S  # input items per transaction, or after this long
from ..config import STORE_CALL_KEEP_S, STORE_CLOCK_CHECK_S, STORE_CLOCK_SKEW_S
from ..config import STORE_RECONNECT_S, WORKER_BEAT_WAIT_S, WORKER_FORGET_S
from ..llm.shares import Peer
from ..errors import InputError, JobExists, StorageError
from .owners import worker_id
from ..redact import redact, redact_error
from ..states import JobStatus
from .base import (IngestState, InputErrorRow, ItemResult, ItemView, JobRecord, LeasedItem, ReviewRow, RunStats,
                   SpoolRecord, UsageRow, WorkerView)
from .batches import BatchRules
from .connector import Connector, unexpected

log = logging.getLogger(__name__)

NO_ITEM = -1  # the usage ledger's seq for spending that belongs to no item
LOST_LEASE = -2  # ...and for what was paid for items whose lease was lost before their commit
_FINAL = ("done", "failed", "skipped")


def _translated(method):
    """Driver errors leave the store as ``StorageError`` (one line: place, problem, fix), those no
    ``translate`` knows too (``connector.unexpected``, the driver's error chained): no caller ever
    sees a driver's error, so none takes one for an item's own failure.

    A call that lost its connection to the server (a restart) is made again, whole, with backoff, for
    up to ``STORE_RECONNECT_S``. Only the outermost call of a thread retries; ``_once`` methods never
    do. The server may have committed the call's transaction and lost only its acknowledgement: each
    attempt of one call carries the same token (``_Call``), and a rule that must not be done twice
    (a lease, a hold, a commit's billing) records its result under it in its own transaction, so that
    the repeat returns that result and writes nothing (``StoreManager._recorded``); the other rules
    are safe to repeat as they are."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self, *args, **kwargs):
            try:
                yield from method(self, *args, **kwargs)
            except self._c.errors as e:
                raise _storage_error(self._c, e) from e
        return stream

    retry = not getattr(method, "_once", False)

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        local = self._calls
        outer = not getattr(local, "depth", 0)
        deadline, attempt = time.monotonic() + STORE_RECONNECT_S, 0
        if outer:
            local.call = _Call()
        while True:
            if outer:
                local.call.attempt, local.call.sections = attempt, 0
            local.depth = getattr(local, "depth", 0) + 1
            try:
                return method(self, *args, **kwargs)
            except self._c.errors as e:
                if not outer:
                    raise  # as it is: the outermost call retries or translates it
                if not (retry and self._c.disconnected(e) and time.monotonic() < deadline):
                    raise _storage_error(self._c, e) from e
                wait = reconnect_delay(attempt)
                log.warning("lost the connection to the store (%s); trying again in %.1f s", " ".join(str(e).split()),
                            wait)
            finally:
                local.depth -= 1
            time.sleep(wait)
            attempt += 1
            self._c.recover()
    return call


def _storage_error(connector: Connector, error: BaseException) -> StorageError:
    translated = connector.translate(error)
    if translated is None:
        log.debug("an error the store does not expect", exc_info=error)  # -v: the driver's traceback
        return unexpected(connector.location, error)
    return translated


class _Call:
    """One outermost store call, the same in each of its attempts: ``token`` names the results its
    recorded transactions commit (``sections`` counts them, in the order each attempt makes them)."""

    __slots__ = ("token", "attempt", "sections")

    def __init__(self) -> None:
        self.token, self.attempt, self.sections = None, 0, 0  # the token is made when first needed: few calls write


class _Recorded:
    """A recorded transaction's token, and on a repeat whose first attempt committed, its result."""

    __slots__ = ("token", "done", "value")

    def __init__(self, token: str, done: bool = False, value=None) -> None:
        self.token, self.done, self.value = token, done, value


def reconnect_delay(attempt: int) -> float:
    """0.1 s, doubling, at most 2 s: a restart is over in seconds, and nothing waits on a worker's store
    thread but its own commits."""
    return min(2.0, 0.1 * 2 ** attempt)


def _once(method):
    """Not made again after a lost connection: its caller has a bound of its own (a beat)."""
    method._once = True
    return method


def each_public_method_translated(cls):
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _translated(member))
    return cls


def _job(row: tuple) -> JobRecord:
    return JobRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6], row[7], int(row[8]),
                     float(row[9]), row[10], bool(row[11]))


def _host_pid(worker: str) -> tuple[str, int]:
    """An owner id's host and pid (``host:pid:nonce``); another shape (a test's name) is its own host."""
    parts = worker.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return worker, 0


def _host_time(db_time, skew: float) -> float | None:
    """A time on the database's clock (a lease's expiry) on this host's."""
    return None if db_time is None else float(db_time) - skew


def _json(value) -> str:
    return json.dumps(redact_error(value), ensure_ascii=False)


each_public_method_translated(BatchRules)  # its rules raise StorageError as these do


@each_public_method_translated
class StoreManager(BatchRules):
    """The ``Store`` protocol over a connector. Methods may be called from several threads.

    Times: the ``now`` a caller passes is its host's clock (``host_clock``). Lease expiries, budget
    holds and ingest beats are compared between hosts, so the store keeps them on the database's
    clock, as it does workers' beats: it measures this host's skew against the database now and
    then and shifts each ``now`` by it (``_db_time``). A host whose clock is off by minutes takes no
    live lease over early, nor keeps a dead one late."""

    host_clock = staticmethod(time.time)  # where callers' ``now`` values come from (a test skews it)

    def __init__(self, connector: Connector) -> None:
        self._c = connector
        self._calls = threading.local()  # how deep this thread is in the store's calls: the outermost retries
        self._clock = (float("-inf"), 0.0)  # (when measured, on the monotonic clock; this host's skew)

    # exactly once, and one clock ------------------------------------------------------------------

    def _recorded(self) -> _Recorded:
        """First in a transaction that must not be done twice: its token and, when the call is made
        again after a lost connection and its first attempt committed, that attempt's result (the
        caller returns it and writes nothing). A repeat takes the token before anything else: if
        the first attempt is still committing on the server, it waits for it, then sees its result."""
        call = self._calls.call
        if call.token is None:
            call.token = secrets.token_hex(12)
        call.sections += 1
        token = f"{call.token}.{call.sections}"
        if call.attempt and not self._c.run("claim_call", token=token):
            (value,) = self._c.one("call_result", token=token)
            log.info("a store call was made again after its acknowledgement was lost: its first result stands")
            return _Recorded(token, True, json.loads(value))
        return _Recorded(token)

    def _record(self, call: _Recorded, value) -> None:
        """In the transaction, once its result is known: the result (JSON), committed with what it did."""
        self._c.run("record_call", token=call.token, result=json.dumps(value), keep_s=STORE_CALL_KEEP_S)

    def _done_once(self, work):
        """``work()`` in a recorded transaction: its value, or on a repeat the first attempt's."""
        with self._c.transaction():
            call = self._recorded()
            if call.done:
                return call.value
            value = work()
            self._record(call, value)
        return value

    def _db_time(self, now: float) -> float:
        """A time on this host's clock as the database's clock tells it."""
        return now + self._skew()

    def _skew(self) -> float:
        """How far the database's clock is ahead of this host's, measured every ``STORE_CLOCK_CHECK_S``
        (to half a round trip); under ``STORE_CLOCK_SKEW_S`` it is noise, and times are taken as given."""
        checked, skew = self._clock
        if time.monotonic() - checked >= STORE_CLOCK_CHECK_S:
            before = self.host_clock()
            (db,) = self._c.one("db_now")
            measured = float(db) - (before + self.host_clock()) / 2
            if abs(measured) < STORE_CLOCK_SKEW_S:
                measured = 0.0
            elif abs(measured - skew) >= STORE_CLOCK_SKEW_S:
                log.warning("this host's clock is %.1f s off the database's: leases are reckoned on the database's",
                            -measured)
            self._clock, skew = (time.monotonic(), measured), measured
        return skew

    def close(self) -> None:
        self._c.close()

    def verify(self) -> None:
        self._c.verify()

    # jobs ---------------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._c.one("get_job", job_id=job_id)
        return _job(row) if row else None

    def list_jobs(self) -> list[JobRecord]:
        return [_job(row) for row in self._c.all("list_jobs")]

    @_once  # its ingest, cut off, is read on by the next submit or tick (continue_ingest)
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
        now, beat = time.time(), self._db_time(self.host_clock())  # beats are compared between hosts
        try:
            with self._c.transaction():
                self._c.run("insert_job", id=job.id, name=job.name, spec=json.dumps(job.spec), job_file=job.job_file,
                            input_sha256=job.input_sha256, prompt_version=job.prompt_version, now=now,
                            simulated=int(job.simulated))
                self._c.run("insert_ingest", job_id=job.id, owner=owner, now=beat)
        except self._c.integrity_errors:
            raise JobExists(job.id) from None
        return self.continue_ingest(job.id, owner, items, 0)

    @_once
    def continue_ingest(self, job_id: str, owner: str, items: Iterable, next_seq: int) -> int:
        """Store the input entries of a job ``owner`` reads (from where the last batch ended), then
        open the job to workers. Raises ``JobExists`` if another reader has taken the job over."""
        seq, stored, batch, line = next_seq, 0, [], None
        flushed = time.monotonic()

        def flush(last: bool) -> int:
            added, beat = 0, self._db_time(self.host_clock())  # compared with other hosts' clocks: the database's
            with self._c.transaction():
                if line is None:  # nothing read in this pass: the claim must still be ours
                    row = self._c.one("get_ingest", job_id=job_id)
                    ours = row is not None and row[0] == owner
                else:
                    ours = self._c.run("ingest_progress", line=line, next_seq=seq, now=beat, job_id=job_id,
                                       owner=owner)
                if not ours:
                    raise JobExists(job_id)  # taken over: what this reader holds is not to be stored
                errors = [dict(job_id=job_id, line=e.line, field=e.field, message=e.reason)
                          for e in batch if isinstance(e, InputError)]
                rows = [dict(job_id=job_id, seq=position, item_id=item.item_id, line=item.line, text=item.text)
                        for position, item in (e for e in batch if not isinstance(e, InputError))]
                added = self._c.many("insert_item", rows)  # one round trip for the batch, not one per line
                if added < len(rows):  # ids seen before (in this batch or an earlier one): the first is kept
                    stored = dict(self._c.all("item_seqs", job_id=job_id, ids=[r["item_id"] for r in rows]))
                    errors += [dict(job_id=job_id, line=r["line"], field=None,
                                    message=f"duplicate id {r['item_id']!r}: kept the first")
                               for r in rows if stored.get(r["item_id"]) != r["seq"]]
                self._c.many("insert_input_error", errors)
                if last:
                    self._c.run("finish_ingest", job_id=job_id)
                    self._c.run("ingest_done", now=time.time(), job_id=job_id)
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
            if len(batch) >= INGEST_BATCH or time.monotonic() - flushed >= INGEST_BEAT_S:
                stored += flush(False)
                flushed = time.monotonic()
        stored += flush(True)
        return stored

    def ingest_state(self, job_id: str) -> IngestState | None:
        """Who reads a job's input in and how far it got; None once it is all in."""
        row = self._c.one("get_ingest", job_id=job_id)
        if row is None:
            job = self.get_job(job_id)
            if job is None or job.status != JobStatus.INGESTING:
                return None
            with self._c.transaction():  # left half-read by an earlier version: where it got to is in its rows
                self._c.run("migrate_ingest")
            row = self._c.one("get_ingest", job_id=job_id)
        if not row:
            return None
        owner, line, next_seq, beat = row
        if beat:  # 0: handed back, stale on any clock
            beat = float(beat) - self._skew()  # kept on the database's clock: the caller's, for its ``now``
        return IngestState(owner, line, next_seq, beat)

    def claim_ingest(self, job_id: str, owner: str, dead_owner: str | None, now: float) -> bool:
        """Take over reading a job's input from a reader found dead; False if another took it first
        (or this call's own first attempt, whose acknowledgement was lost, took it: True)."""
        now = self._db_time(now)
        return self._done_once(lambda: self._c.run("claim_ingest", owner=owner, now=now, job_id=job_id,
                                                   dead_owner=dead_owner) == 1)

    def release_ingest(self, job_id: str, owner: str) -> None:
        self._c.run("release_ingest", job_id=job_id, owner=owner)

    def discard_job(self, job_id: str) -> None:
        """Remove a job whose submission died half-way, so that it can be submitted again."""
        with self._c.transaction():
            self._c.run("discard_job", job_id=job_id)

    def update_job_spec(self, job_id: str, spec: dict, job_file: str | None) -> None:
        self._c.run("update_job_spec", spec=json.dumps(spec), job_file=job_file, now=time.time(), job_id=job_id)

    def set_status(self, job_id: str, status: str) -> None:
        self._c.run("set_status", status=status, now=time.time(), job_id=job_id)

    def hold(self, job_id: str, reason: str) -> None:
        """A job a worker found it cannot run: ``held``, with the reason ``status`` shows."""
        with self._c.transaction():
            self._c.run("hold_job", job_id=job_id, reason=redact(reason), now=time.time())
            self._c.run("set_status", status=JobStatus.HELD, now=time.time(), job_id=job_id)

    def release_hold(self, job_id: str) -> None:
        self._c.run("release_hold", job_id=job_id)

    def holds(self) -> dict[str, str]:
        """Why each held job was held (job id -> reason)."""
        return dict(self._c.all("job_holds"))

    def cancel(self, job_id: str) -> int:
        """Out of the queue: its waiting items stopped, the job ``cancelled``; returns the items stopped."""
        with self._c.transaction():
            stopped = self._c.run("stop_pending", job_id=job_id)
            self._c.run("release_hold", job_id=job_id)
            self._c.run("set_status", status=JobStatus.CANCELLED, now=time.time(), job_id=job_id)
        return stopped

    def runnable_jobs(self, now: float) -> list[str]:
        return [row[0] for row in self._c.all("runnable_jobs", now=self._db_time(now))]

    # items --------------------------------------------------------------------------------------

    def lease(self, job_id: str, owner: str, limit: int, now: float, lease_s: float,
              units: int = 0) -> list[LeasedItem]:
        """Up to ``limit`` items of labelling work (expired leases first, then the oldest input items
        and variants to re-check), and besides them up to ``units`` augment units. An expired lease
        is taken whoever held it: another host's items come back only this way, after their expiry.
        Made again after a lost acknowledgement, it returns the items its first attempt leased."""
        now = self._db_time(now)
        with self._c.transaction():
            call = self._recorded()
            if call.done:
                epochs = dict(call.value)
                rows = [(*row, epochs[row[0]]) for row in self._c.all("leased_items", job_id=job_id,
                                                                         seqs=sorted(epochs))]
            else:
                rows = self._c.all("lease", owner=owner, expires=now + lease_s, job_id=job_id, now=now, limit=limit,
                                   units=units, total=limit + units)
                self._record(call, sorted([int(row[0]), int(row[-1])] for row in rows))
        self._c.churned(len(rows))
        return sorted((LeasedItem(*row) for row in rows), key=lambda item: item.seq)

    def renew(self, owner: str, now: float, lease_s: float) -> set[tuple[str, int, int]]:
        """The heartbeat: the owner's leases (and budget holds) last ``lease_s`` more from now.
        Returns the leases it renewed, as (job id, seq, epoch): an item the owner leased that is not
        among them was taken over (or finished, or released) meanwhile."""
        now = self._db_time(now)
        with self._c.transaction():
            renewed = self._c.all("renew", expires=now + lease_s, owner=owner)
            self._c.run("renew_holds", expires=now + lease_s, owner=owner, now=now)
        return {(job_id, int(seq), int(epoch)) for job_id, seq, epoch in renewed}

    def release(self, owner: str) -> int:
        with self._c.transaction():
            released = self._c.run("release", owner=owner)
            self._c.run("drop_holds", owner=owner)
            return released

    def hold_budget(self, job_id: str, owner: str, tokens: int, cost: float, max_tokens: int | None,
                    max_cost: float | None, now: float, lease_s: float) -> tuple[int, float]:
        """Grant up to (tokens, cost) of the job's budget to ``owner``, atomically across workers and
        hosts (the job row is locked while the grant is reckoned): spent + every live hold never
        passes a cap. A hold expires with its owner's leases. Made again after a lost acknowledgement,
        it returns the first attempt's grant and adds nothing to it."""
        now = self._db_time(now)
        with self._c.transaction():
            call = self._recorded()
            if call.done:
                return call.value[0], call.value[1]
            spent_tokens, spent_cost = self._c.one("lock_job", job_id=job_id)
            held_tokens, held_cost = self._c.one("holds", job_id=job_id, now=now)
            if max_tokens is not None:
                tokens = max(0, min(tokens, max_tokens - int(spent_tokens) - int(held_tokens)))
            if max_cost is not None:
                cost = max(0.0, min(cost, max_cost - float(spent_cost) - float(held_cost)))
            self._c.run("add_hold", job_id=job_id, owner=owner, tokens=tokens, cost=cost, expires=now + lease_s)
            self._record(call, [tokens, cost])
        return tokens, cost

    def budget_held_elsewhere(self, job_id: str, owner: str, now: float) -> tuple[int, float]:
        """What other owners (workers, a batch tick's chunks) hold of the job's budget now, unspent:
        a worker that cannot get a hold while others have some leaves the rest to them (they give
        back what they do not spend when they end) instead of stopping the job as spent."""
        tokens, cost = self._c.one("holds_of_others", job_id=job_id, owner=owner, now=self._db_time(now))
        return int(tokens), float(cost)

    def give_back_hold(self, job_id: str, owner: str, tokens: int, cost: float) -> None:
        """Take (tokens, cost) off ``owner``'s hold on the job: what it was granted and will not use.
        Made again after a lost acknowledgement, it takes nothing more off."""
        def give_back() -> None:
            self._c.run("give_back_hold", job_id=job_id, owner=owner, tokens=tokens, cost=cost)
        self._done_once(give_back)

    def reclaim(self, owners: Iterable[str]) -> int:
        """Leases of owners known dead (same-host workers whose process is gone) back to pending now.
        One statement for all the owners, locking their items in (job, seq) order and then their
        holds in (job, owner) order: two hosts reclaiming overlapping owners never deadlock."""
        owners = sorted(set(owners))
        if not owners:
            return 0
        with self._c.transaction():
            released = self._c.run("release_owners", owners=owners)
            self._c.run("drop_owners_holds", owners=owners)
            return released

    def leased_owners(self) -> list[str]:
        return [row[0] for row in self._c.all("leased_owners")]

    def lease_ends(self, job_id: str) -> tuple[int, float | None]:
        """The job's items leased now, and when the last of those leases lapses (on this host's
        clock: leases are reckoned on the database's) unless its worker renews it."""
        n, until = self._c.one("lease_ends", job_id=job_id)
        return int(n), _host_time(until, self._skew())

    def complete(self, job_id: str, owner: str, results: list[ItemResult],
                 side_usage: Iterable[UsageRow] = ()) -> list[int]:
        """Results, and usage that belongs to no item (``side_usage``: embeddings), in one transaction.

        Only the results whose item is still leased to ``owner`` (at the result's epoch, where it
        carries one) are applied: their drafts, state, spawned items, usage and spending. The others
        are refused whole (their lease was lost: another worker has the item, or had it); their
        answers stay in the cache. Returns the refused seqs. Made again after a lost acknowledgement,
        it returns the first attempt's refusals and writes nothing: not its side usage, nor a
        released result's, nor a refused one's again."""
        now = time.time()
        # Serialised before the transaction: a result that cannot be stored fails the batch with nothing written.
        prepared = []
        for r in results:
            summary = _json(r.summary) if r.summary is not None and not r.release else None
            drafts = [] if r.release else [dict(job_id=job_id, seq=r.seq, idx=idx, priority=record["review_priority"],
                                                record=_json(record)) for idx, record in enumerate(r.records)]
            usage = [dict(job_id=job_id, seq=r.seq, at=now, model=u.model, prompt_tokens=u.prompt_tokens,
                          completion_tokens=u.completion_tokens, cost_usd=u.cost_usd, cached=int(u.cached),
                          cached_prompt_tokens=u.cached_prompt_tokens)
                     for u in r.usage]
            prepared.append((r, summary, drafts, usage))
        side = [dict(job_id=job_id, seq=NO_ITEM, at=now, model=u.model, prompt_tokens=u.prompt_tokens,
                     completion_tokens=u.completion_tokens, cost_usd=u.cost_usd, cached=int(u.cached),
                          cached_prompt_tokens=u.cached_prompt_tokens)
                for u in side_usage]
        with self._c.transaction():
            call = self._recorded()
            if call.done:
                return call.value
            epochs = dict(self._c.all("fence", job_id=job_id, owner=owner, seqs=sorted({r.seq for r in results})))
            # One result per item (the first): items are written by their key, under the fence's lock.
            firsts = {p[0].seq: p for p in reversed(prepared)}
            accepted = [p for p in prepared if firsts[p[0].seq] is p and p[0].seq in epochs
                        and p[0].epoch in (None, epochs[p[0].seq])]
            applied = {p[0].seq for p in accepted}
            refused = [r.seq for r in results if r.seq not in applied]
            lost = self._lost_usage(job_id, [p for p in prepared if p[0].seq not in applied], now)
            finished, released, drafts, usage, spawned, uncache = [], [], [], [], [], []
            for r, summary, item_drafts, item_usage in accepted:
                if r.release:
                    released.append(dict(job_id=job_id, seq=r.seq, owner=owner))
                else:
                    finished.append(dict(state=r.state, priority=r.priority, result=summary, job_id=job_id,
                                         seq=r.seq, owner=owner))
                    drafts.extend(item_drafts)
                    spawned.extend((r.seq, s) for s in r.spawn)
                usage.extend(item_usage)
                uncache.extend(r.uncache)
            usage.extend(side)
            usage.extend(lost)
            tokens = sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage if not u["cached"])
            cost = sum(u["cost_usd"] for u in usage if not u["cached"])
            self._c.many("clear_drafts", [dict(job_id=job_id, seq=f["seq"]) for f in finished])
            self._c.many("insert_draft", drafts)
            self._c.many("finish_item", finished)
            self._c.many("unlease_item", released)
            self._c.many("insert_usage", usage)
            # In key order, as every cache write takes them: two commits sharing keys (two items of the
            # same text ask the same request) must not lock them crosswise.
            self._c.many("delete_cache", [dict(key=key) for key in sorted(set(uncache))])
            self._record(call, refused)
            # The job row last: its lock (spawned seqs, spending) is held for these statements and the
            # COMMIT only, not for the items' writes, so several workers' commits on one job overlap.
            # The spending goes with the COMMIT (one message): without spawned items, the job row is
            # never held while this process waits (a stopped worker would hold every peer's commit).
            if spawned:
                self._c.one("lock_job", job_id=job_id)
                self._spawn(job_id, spawned)
            self._c.commit_with("spend", tokens=tokens, cost=cost, now=now, job_id=job_id, owner=owner)
        self._c.churned(len(finished) + len(released))
        return refused

    def _lost_usage(self, job_id: str, refused: list, now: float) -> list[dict]:
        """What the provider charged for refused results, as usage of no item (``LOST_LEASE``): it
        counts in the job's spend and caps, and no item's cost twice (the item's own is its new
        lease's). A result its own lease already committed (a commit sent again after its
        acknowledgement was lost) was billed then, and is not again."""
        if not refused:
            return []
        states = {seq: (state, int(epoch)) for seq, state, epoch
                  in self._c.all("item_epochs", job_id=job_id, seqs=sorted({p[0].seq for p in refused}))}
        rows = []
        for r, _, _, item_usage in refused:
            state, epoch = states.get(r.seq, (None, None))
            if state in _FINAL and r.epoch in (None, epoch):
                continue
            if not self._c.run("insert_lost_result", job_id=job_id, seq=r.seq, epoch=-1 if r.epoch is None else r.epoch):
                continue  # billed when this same result was refused before
            rows.extend({**u, "seq": LOST_LEASE} for u in item_usage if not u["cached"])
        return rows

    def _spawn(self, job_id: str, spawned: list) -> None:
        """New items made from finished ones (augmentation), in the finishing transaction, numbered
        from the job's highest seq under the job row's lock: a crash before it commits makes none,
        and a retaken parent makes the same ids again, kept once."""
        (seq,) = self._c.one("next_seq", job_id=job_id)
        for parent, child in spawned:
            payload = json.dumps(child.payload, ensure_ascii=False) if child.payload is not None else None
            if self._c.run("spawn_item", job_id=job_id, seq=seq, item_id=child.item_id, text=child.text,
                           kind=child.kind, payload=payload, parent=parent):
                seq += 1

    def stop_remaining(self, job_id: str) -> int:
        return self._c.run("stop_remaining", job_id=job_id)

    # The counts these return are shown (`submit`: items resumed): a repeat returns the first's.

    def resume_stopped(self, job_id: str) -> int:
        return self._done_once(lambda: self._c.run("resume_stopped", job_id=job_id))

    def requeue(self, job_id: str, seqs: Iterable[int]) -> int:
        """Failed items back to pending (an outage caught them: they did not fail on their own)."""
        seqs = list(seqs)

        def requeue() -> int:
            n = 0
            for seq in seqs:
                self._c.run("requeue_drafts", job_id=job_id, seq=seq)
                n += self._c.run("requeue_item", job_id=job_id, seq=seq)
            return n
        return self._done_once(requeue)

    def retry_failed(self, job_id: str) -> int:
        """Failed items back to pending (the job submitted again): a batch job's lines get their
        ``batch.max_attempts`` afresh, or they would fail again at once on the record of the last ones."""
        def retry() -> int:
            self._c.run("retry_drafts", job_id=job_id)
            retried = self._c.run("retry_failed", job_id=job_id)
            if retried:
                self._c.run("batch_forget_failures", job_id=job_id)
            return retried
        return self._done_once(retry)

    # reading ------------------------------------------------------------------------------------

    def item(self, job_id: str, seq: int) -> ItemView | None:
        """One item as it stands: state, lease owner, epoch and its drafts (for tests and tools)."""
        row = self._c.one("item", job_id=job_id, seq=seq)
        if row is None:
            return None
        drafts = [json.loads(raw) for (raw,) in self._c.all("item_drafts", job_id=job_id, seq=seq)]
        return ItemView(row[0], row[1], int(row[2]), drafts)

    def counts(self, job_id: str) -> dict[str, int]:
        return {state: int(n) for state, n in self._c.all("counts", job_id=job_id)}

    def kind_counts(self, job_id: str) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for kind, state, n in self._c.all("kind_counts", job_id=job_id):
            counts.setdefault(kind, {})[state] = int(n)
        return counts

    def item_texts(self, job_id: str) -> Iterator[str]:
        """Every text in the job (items and variants), streamed over a connection of its own: the
        caller may read it in another thread while this one commits."""
        for (text,) in self._c.stream("item_texts", job_id=job_id):
            yield text

    def unit_results(self, job_id: str) -> Iterator[dict]:
        for (raw,) in self._c.all("unit_results", job_id=job_id):
            yield json.loads(raw)

    def flag_counts(self, job_id: str) -> dict[str, int]:
        return {flag: int(n) for flag, n in self._c.all("flag_counts", job_id=job_id)}

    def origin_counts(self, job_id: str) -> list[tuple[str | None, bool, int]]:
        """Drafts per (endpoint, simulated): who answered the job."""
        return [(endpoint, bool(simulated), int(n))
                for endpoint, simulated, n in self._c.all("origin_counts", job_id=job_id)]

    def variant_flag_counts(self, job_id: str) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for kind, flag, n in self._c.all("variant_flag_counts", job_id=job_id):
            counts.setdefault(kind, {})[flag] = int(n)
        return counts

    def iter_records(self, job_id: str) -> Iterator[dict]:
        for raw in self.iter_record_json(job_id):
            yield json.loads(raw)

    def iter_record_json(self, job_id: str) -> Iterator[str]:
        """The records as stored: one JSON object each, on one line (drafts.jsonl is these), read in
        pages: a million records never sit in memory at once."""
        for (raw,) in self._c.stream("records", job_id=job_id):
            yield raw

    def input_errors(self, job_id: str) -> list[InputErrorRow]:
        return [InputErrorRow(*row) for row in self._c.all("input_errors", job_id=job_id)]

    def usage_totals(self, job_id: str) -> dict:
        n, prompt, completion, cost, cached, prompt_cached = (
            int(v) if i != 3 else float(v) for i, v in enumerate(self._c.one("usage_totals", job_id=job_id)))
        # Tokens and cost are what was billed; answers from the cache cost nothing. Of the prompt
        # tokens, ``cached_prompt_tokens`` came from the provider's prompt cache (the cached price).
        lost_n, lost_tokens, lost_cost = self._c.one("lost_usage_totals", job_id=job_id, seq=LOST_LEASE)
        return {"requests_billed": n - cached, "cached_answers": cached, "prompt_tokens": prompt,
                "cached_prompt_tokens": prompt_cached, "completion_tokens": completion,
                "cost_usd": round(cost, 6),
                # Of those, paid for items whose lease was lost before their commit (a worker paused or
                # cut off past its lease): charged by the provider, the items' drafts are their new lease's.
                "paid_for_lost_leases": {"requests": int(lost_n), "tokens": int(lost_tokens),
                                         "cost_usd": round(float(lost_cost), 6)}}

    def add_run(self, job_id: str, owner: str, started: float, stats: RunStats) -> None:
        """A run's figures, once (made again after a lost acknowledgement, it adds nothing)."""
        self._done_once(lambda: self._c.run(
            "insert_run", job_id=job_id, owner=owner, started=started, ended=time.time(), requests=stats.requests,
            retries=stats.retries, rate_limited=stats.rate_limited, server_errors=stats.server_errors,
            timeouts=stats.timeouts, cache_hits=stats.cache_hits, wall_s=stats.wall_s) and None)

    def run_totals(self, job_id: str) -> dict:
        row = self._c.one("run_totals", job_id=job_id)
        keys = ("runs", "requests", "retries", "rate_limited", "server_errors", "timeouts", "cache_hits", "wall_s")
        return {k: (float(v) if k == "wall_s" else int(v)) for k, v in zip(keys, row)}

    # cache --------------------------------------------------------------------------------------

    def cache_get(self, key: str) -> dict | None:
        row = self._c.one("get_cache", key=key)
        return json.loads(row[0]) if row else None

    def cache_get_many(self, keys: Iterable[str]) -> dict[str, dict]:
        """The answers found for ``keys``, in one query (a round trip per key is ~4 ms on a loaded
        PostgreSQL: a batch tick replaying a million items looks up a page of them at once)."""
        keys = sorted(set(keys))
        if not keys:
            return {}
        return {key: json.loads(response) for key, response in self._c.all("get_cache_many", keys=keys)}

    def cache_put(self, entries: Iterable[tuple[str, dict]]) -> None:
        """Entries written on their own, not with an item's result: answers as they arrive, a job's
        example embeddings."""
        now = time.time()
        rows = {key: dict(key=key, response=json.dumps(value, ensure_ascii=False), now=now) for key, value in entries}
        with self._c.transaction():
            self._c.many("insert_cache", [rows[key] for key in sorted(rows)])  # key order: the lock order

    # reviews (issue 13) -------------------------------------------------------------------------

    def add_reviews(self, job_id: str, rows: Iterable[ReviewRow]) -> int:
        """Upsert, in one transaction: a row replaces the same reviewer's earlier one for that draft
        unless it is older. Returns the rows that changed."""
        now = time.time()
        params = [dict(job_id=job_id, draft_id=r.draft_id, reviewer=r.reviewer, verdict=r.verdict,
                       label=None if r.label is None else json.dumps(r.label, ensure_ascii=False),
                       updated_at=r.updated_at, lead_time=r.lead_time, origin=r.origin, now=now) for r in rows]
        return self._done_once(lambda: self._c.many("upsert_review", params))  # the count is shown: the first's

    def reviews(self, job_id: str) -> list[ReviewRow]:
        return [ReviewRow(draft_id, reviewer, verdict, None if label is None else json.loads(label), updated_at,
                          lead_time, origin)
                for draft_id, reviewer, verdict, label, updated_at, lead_time, origin
                in self._c.all("reviews", job_id=job_id)]

    def add_samples(self, job_id: str, drafts: Iterable[tuple[str, str]]) -> None:
        """(draft id, purpose) pairs sent out for review; a draft keeps the purpose it was first drawn for,
        unless it is drawn for an audit later (the audit must stay uniform)."""
        now = time.time()
        with self._c.transaction():
            self._c.many("insert_sample", [dict(job_id=job_id, draft_id=d, purpose=purpose, now=now)
                                           for d, purpose in drafts])

    def samples(self, job_id: str) -> dict[str, str]:
        return dict(self._c.all("samples", job_id=job_id))

    # workers (issue 11) --------------------------------------------------------------------------

    def pace_secret(self) -> bytes:
        """The key pace keys are hashed under: 32 random bytes made by the first caller of a store
        (of two at once, one's is kept: both read back the same). Never shown nor exported."""
        with self._c.transaction():
            self._c.run("insert_secret", secret=secrets.token_bytes(32))
            (secret,) = self._c.one("get_secret")
        return bytes(secret)

    @_once
    def worker_beat(self, worker: str, job_id: str, pace_key: str, rpm: float, tpm: float,
                    stale_s: float, rejoin: bool = False) -> tuple[float, list[Peer]]:
        """``worker`` runs ``job_id`` under ``pace_key`` now (the database's clock, one for every host):
        its row upserted (``joined`` kept unless its last beat is ``stale_s`` old, or ``rejoin``: its
        peers may have counted it out, so it joins again now, a newcomer to them), and the live
        workers of that pace key returned, itself among them. Waits at most ``WORKER_BEAT_WAIT_S``
        (about a beat) for a lock: a beat that cannot land soon is of no use, the next one comes."""
        host, pid = _host_pid(worker)
        with self._c.transaction(wait_s=WORKER_BEAT_WAIT_S):
            # One beat of a key at a time (each sees those before), the whole of it with its COMMIT.
            rows = self._c.commit_with("beat", worker=worker, host=host, pid=pid, job_id=job_id, pace_key=pace_key,
                                       rpm=float(rpm), tpm=float(tpm), stale_s=float(stale_s), rejoin=bool(rejoin),
                                       forget_s=float(max(WORKER_FORGET_S, stale_s)))
        # Its own row is among them (just written, at `now`), so there is always one.
        return float(rows[0][0]), [Peer(w, float(joined), float(beat), float(r), float(t))
                                   for _, w, joined, beat, r, t in rows]

    @_once
    def worker_leave(self, worker: str) -> None:
        with self._c.transaction(wait_s=WORKER_BEAT_WAIT_S):
            self._c.run("worker_leave", worker=worker)

    # A worker's life lock (PostgreSQL; None on a backend without one): held by a connection of the
    # worker's own, it dies with the process, so its peers count a killed worker out at once.

    @_once
    def worker_hold_life(self, worker: str) -> bool | None:
        """Hold ``worker``'s life lock: True if taken now (its first, or again after its connection
        was lost), False if it was held already, None where there is none."""
        hold = getattr(self._c, "hold_life", None)
        return None if hold is None else hold(worker)

    @_once
    def worker_drop_life(self, worker: str) -> None:
        drop = getattr(self._c, "drop_life", None)
        if drop is not None:
            drop(worker)

    @_once
    def workers_life_held(self, workers: list[str]) -> dict[str, bool] | None:
        """Whether each of ``workers`` holds its life lock now (None where there are none)."""
        held = getattr(self._c, "lives_held", None)
        return None if held is None else held(workers)

    def live_workers(self, stale_s: float) -> list[WorkerView]:
        """The workers that beat within ``stale_s``, with the items each holds leased."""
        (now,) = self._c.one("db_now")
        now, skew = float(now), self._skew()
        return [WorkerView(worker, host, int(pid), job_id, int(leased), float(joined), float(beat),
                           round(max(0.0, now - float(beat)), 1), True, _host_time(until, skew))
                for worker, host, pid, job_id, joined, beat, leased, until
                in self._c.all("live_workers", now=now, stale_s=stale_s)]

    def silent_workers(self, stale_s: float) -> list[WorkerView]:
        """The owners of leases that have not beaten within ``stale_s`` (stopped, dead, cut off; or
        never beat), one per job they hold items of, with when those leases lapse unless renewed:
        the items a live worker cannot take until then."""
        (now,) = self._c.one("db_now")
        now, skew = float(now), self._skew()
        views = []
        for worker, job_id, joined, beat, leased, until in self._c.all("silent_workers", now=now, stale_s=stale_s):
            host, pid = _host_pid(worker)
            views.append(WorkerView(worker, host, pid, job_id, int(leased),
                                    None if joined is None else float(joined), None if beat is None else float(beat),
                                    None if beat is None else round(max(0.0, now - float(beat)), 1),
                                    False, _host_time(until, skew)))
        return sorted(views, key=lambda v: (v.host, v.pid, v.worker, v.job_id))

    # spool --------------------------------------------------------------------------------------

    def spool_record(self, path: str, sha256: str, job_id: str | None, error: str | None,
                     inputs: dict | None = None) -> None:
        """The outcome of a spool file's content: recorded again (replaced) when it is retried."""
        self._c.run("spool_record", path=path, sha256=sha256, job_id=job_id, error=redact(error) if error else error,
                    inputs=json.dumps(inputs) if inputs is not None else None, now=time.time())

    def spool_entry(self, path: str, sha256: str) -> SpoolRecord | None:
        row = self._c.one("spool_entry", path=path, sha256=sha256)
        if row is None:
            return None
        return SpoolRecord(path, row[0], row[1], json.loads(row[2]) if row[2] else {})

    def spool_failures(self) -> list[SpoolRecord]:
        """Spool files whose latest content failed, with the error."""
        return [SpoolRecord(path, None, error, {}) for path, error, _ in self._c.all("spool_failures")]
