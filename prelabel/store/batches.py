"""The store's records and rules for Batch API chunks (``prelabel.batch.state.BatchState``), for every backend.

Planning a chunk holds its worst case against the job's budget (a budget hold owned by the chunk,
reckoned under the job row's lock like any hold) in the transaction that records its intent; and
collecting it bills its lines, turns the hold into spending and counts its failed lines in one
transaction, refused when the chunk is already collected: a second collect (a crashed tick's
successor, two ticks at once) bills nothing.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

from .base import UsageRow

NO_ITEM = -1            # the usage ledger's seq for spending that belongs to no item
HOLD_S = 8 * 24 * 3600  # a chunk's hold outlives its batch's 24 h window and a week of missed ticks


# A chunk's stages (``prelabel.batch.reconcile.Stage`` names them for the reconciler).
PLANNED, UPLOADED, SUBMITTED, COLLECTED = "planned", "uploaded", "submitted", "collected"


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    job_id: str
    chunk: str
    stage: str                   # planned -> uploaded -> submitted -> collected
    requests: int
    path: str                    # the input file on this host (whole: renamed when complete)
    endpoint: str
    model: str
    planned_at: float
    attempt: int = 1             # the highest attempt among its lines (2: a retry of lines that failed once)
    held_tokens: int = 0         # its worst case, held against the job's budget until collected
    held_cost: float = 0.0
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None    # the provider's: validating, in_progress, completed, expired...
    created: int | None = None   # the provider's times (Unix seconds)
    expires: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: str | None = None    # why the provider failed it ("code: message; ...")


@dataclass(frozen=True, slots=True)
class LineFailureRecord:
    key: str
    attempts: int                # batches that did not answer it
    error: str                   # the provider's last word on it
    retryable: bool              # False: another batch would be refused the same


def batch_fields(batch: Any) -> dict:
    """What a chunk records of its batch (``prelabel.batch.reconcile.RemoteBatch``)."""
    return dict(batch_id=batch.id, status=batch.status, created=batch.created_at or None,
                expires=batch.expires_at, total=batch.total, completed=batch.completed, failed=batch.failed,
                errors="; ".join(batch.errors) or None)


def hold_owner(job_id: str, chunk: str) -> str:
    return f"batch:{job_id}:{chunk}"


def _chunk(row: tuple) -> ChunkRecord:
    (job_id, chunk, stage, requests, path, endpoint, model, planned_at, attempt, held_tokens, held_cost, file_id,
     batch_id, status, created, expires, total, completed, failed, errors) = row
    return ChunkRecord(job_id, chunk, stage, int(requests), path, endpoint, model, float(planned_at),
                       int(attempt), int(held_tokens), float(held_cost), file_id, batch_id, status,
                       None if created is None else int(created), None if expires is None else int(expires),
                       int(total), int(completed), int(failed), errors)


class BatchRules:
    """Mixed into ``StoreManager`` (which gives ``self._c``, the connector)."""

    def batch_chunks(self, job_id: str) -> list[ChunkRecord]:
        return [_chunk(row) for row in self._c.all("batch_chunks", job_id=job_id)]

    def batch_plan(self, chunk: ChunkRecord, keys: Iterable[str], max_tokens: int | None,
                   max_cost: float | None) -> tuple[int, float]:
        """Record a chunk's intent and its lines, holding its worst case (what the caps leave of it:
        returned) against the budget, in one transaction (made again after a lost acknowledgement, it
        returns the first attempt's hold)."""
        rows = [dict(job_id=chunk.job_id, chunk=chunk.chunk, key=key) for key in keys]
        at = self._db_time(chunk.planned_at)  # live holds are reckoned on the database's clock
        with self._c.transaction():
            call = self._recorded()
            if call.done:
                return call.value[0], call.value[1]
            spent_tokens, spent_cost = self._c.one("lock_job", job_id=chunk.job_id)
            held_tokens, held_cost = self._c.one("holds", job_id=chunk.job_id, now=at)
            tokens, cost = chunk.held_tokens, chunk.held_cost
            if max_tokens is not None:
                tokens = max(0, min(tokens, max_tokens - int(spent_tokens) - int(held_tokens)))
            if max_cost is not None:
                cost = max(0.0, min(cost, max_cost - float(spent_cost) - float(held_cost)))
            self._c.run("add_hold", job_id=chunk.job_id, owner=hold_owner(chunk.job_id, chunk.chunk), tokens=tokens,
                        cost=cost, expires=at + HOLD_S)
            self._c.run("batch_insert_chunk", job_id=chunk.job_id, chunk=chunk.chunk, requests=chunk.requests,
                        path=chunk.path, endpoint=chunk.endpoint, model=chunk.model, planned_at=chunk.planned_at,
                        attempt=chunk.attempt, held_tokens=tokens, held_cost=cost)
            self._c.many("batch_insert_line", rows)
            self._record(call, [tokens, cost])
        return tokens, cost

    def batch_chunk_keys(self, job_id: str, chunk: str) -> list[str]:
        return [row[0] for row in self._c.all("batch_chunk_keys", job_id=job_id, chunk=chunk)]

    def batch_live_answers(self, job_id: str, owner: str, entries: list[tuple[str, dict]],
                           usage: list[tuple[int, UsageRow]]) -> None:
        """Answers a batch tick got live (re-asks, embeddings) into the cache AND billed (``usage``:
        (seq, row)), the owner's budget hold turned into spending, in one transaction: a kill after
        it neither pays for them again (the cache answers the replay) nor leaves them unbilled."""
        now = time.time()
        cache = {key: dict(key=key, response=json.dumps(value, ensure_ascii=False), now=now) for key, value in entries}
        cache = [cache[key] for key in sorted(cache)]  # key order: the lock order of cache rows
        rows = [dict(job_id=job_id, seq=seq, at=now, model=u.model, prompt_tokens=u.prompt_tokens,
                     completion_tokens=u.completion_tokens, cost_usd=u.cost_usd, cached=0,
                     cached_prompt_tokens=u.cached_prompt_tokens) for seq, u in usage]
        tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
        cost = sum(r["cost_usd"] for r in rows)
        with self._c.transaction():
            call = self._recorded()  # made again after a lost acknowledgement: billed once
            if call.done:
                return
            self._c.many("insert_cache", cache)
            self._c.many("insert_usage", rows)
            self._record(call, None)
            # The job row after the cache rows, as a commit takes them (the lock order), with the COMMIT.
            self._c.commit_with("spend", tokens=tokens, cost=cost, now=now, job_id=job_id, owner=owner)

    def batch_budget_used(self, job_id: str, now: float) -> tuple[int, float]:
        """The job's spending plus every live hold on its budget: its chunks' and its workers' (a
        batch tick's live requests: re-asks, embeddings)."""
        job = self.get_job(job_id)
        held_tokens, held_cost = self._c.one("holds", job_id=job_id, now=self._db_time(now))
        return job.spent_tokens + int(held_tokens), job.spent_cost + float(held_cost)

    def batch_open_keys(self, job_id: str) -> set[str]:
        return {row[0] for row in self._c.stream("batch_open_keys", job_id=job_id)}

    def batch_open_hashes(self, job_id: str) -> set[int]:
        """``hash()`` of each key in flight: what a tick checks its items against (a million keys as
        strings are 150 MB; their hashes a third of it; two keys of one hash make one item wait a tick)."""
        return {hash(row[0]) for row in self._c.stream("batch_open_keys", job_id=job_id)}

    def batch_set_file(self, job_id: str, chunk: str, file_id: str) -> None:
        self._c.run("batch_set_file", job_id=job_id, chunk=chunk, file_id=file_id)

    def batch_set_batch(self, job_id: str, chunk: str, batch: Any) -> None:
        self._c.run("batch_set_batch", job_id=job_id, chunk=chunk, file_id=batch.input_file_id or None,
                    **batch_fields(batch))

    def batch_collect(self, job_id: str, chunk: str, batch: Any | None, usage: list[UsageRow],
                      failures: list[tuple[str, str, bool]], now: float) -> bool:
        """The chunk collected: its lines billed (``usage``, at the batch price), its hold settled, its
        failed lines counted. False (nothing written) when it was collected before."""
        fields = batch_fields(batch) if batch is not None else dict.fromkeys(
            ("batch_id", "status", "created", "expires", "total", "completed", "failed", "errors"))
        billed = [dict(job_id=job_id, seq=NO_ITEM, at=now, model=u.model, prompt_tokens=u.prompt_tokens,
                       completion_tokens=u.completion_tokens, cost_usd=u.cost_usd, cached=int(u.cached),
                       cached_prompt_tokens=u.cached_prompt_tokens)
                  for u in usage]
        tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage if not u.cached)
        cost = sum(u.cost_usd for u in usage if not u.cached)
        with self._c.transaction():
            call = self._recorded()
            if call.done:
                return call.value
            self._c.one("lock_job", job_id=job_id)
            row = self._c.one("batch_chunk_stage", job_id=job_id, chunk=chunk)
            if row is None or row[0] == COLLECTED:
                return False
            self._c.many("insert_usage", billed)
            self._c.run("spend", tokens=tokens, cost=cost, now=now, job_id=job_id, owner=hold_owner(job_id, chunk))
            self._c.run("drop_holds", owner=hold_owner(job_id, chunk))  # the rest of the chunk's hold
            self._c.run("batch_finish_chunk", job_id=job_id, chunk=chunk, **fields)
            self._c.many("batch_add_failure", [dict(job_id=job_id, key=key, error=error, retryable=int(retryable))
                                               for key, error, retryable in failures])
            self._record(call, True)
        return True

    # one tick at a time per job ---------------------------------------------------------------

    def batch_tick_claim(self, job_id: str, owner: str, now: float, lease_s: float,
                         dead: str | None = None) -> str | None:
        """Claim ticking ``job_id``'s batches until ``now + lease_s``: None when ``owner`` has it, else
        who holds it (a live tick, of this host or another). A claim past its expiry is taken, and so
        is ``dead``'s (a holder of this host whose process is gone: the caller checked)."""
        now = self._db_time(now)  # claims are reckoned on the database's clock, as leases are
        with self._c.transaction():
            if self._c.run("batch_tick_claim", job_id=job_id, owner=owner, expires=now + lease_s, now=now,
                           dead=dead) == 1:
                return None
            row = self._c.one("batch_tick_holder", job_id=job_id)
        return row[0] if row else None

    def batch_tick_holder(self, job_id: str) -> tuple[str, float] | None:
        row = self._c.one("batch_tick_holder", job_id=job_id)
        return (row[0], float(row[1]) - self._skew()) if row else None  # on this host's clock

    def batch_tick_renew(self, job_id: str, owner: str, now: float, lease_s: float) -> bool:
        """The tick's heartbeat: its claim lasts ``lease_s`` more. False: it was taken over."""
        now = self._db_time(now)
        with self._c.transaction():
            return self._c.run("batch_tick_renew", job_id=job_id, owner=owner, expires=now + lease_s) == 1

    def batch_tick_release(self, job_id: str, owner: str) -> None:
        with self._c.transaction():
            self._c.run("batch_tick_release", job_id=job_id, owner=owner)

    def batch_failures(self, job_id: str) -> dict[str, LineFailureRecord]:
        return {row[0]: LineFailureRecord(row[0], int(row[1]), row[2], bool(row[3]))
                for row in self._c.all("batch_failures", job_id=job_id)}
