"""What the store keeps of a job's batches: one row per chunk, its lines' keys, and lines that failed.

A chunk is recorded (its intent, with the keys of its lines and its worst case held against the
job's budget) BEFORE its input file is uploaded; then its file id, its batch id and the batch's
status and counts as they are learned; and it is collected in ONE transaction that bills its lines
to the ledger (at the batch price), turns its budget hold into spending, records the lines that
failed (one more attempt each) and marks it collected. So a crash between any two steps leaves
either the chunk as it was (the next tick does the step again, reconciled with the provider) or the
chunk collected, never billed twice.

``BatchState`` is the interface the executor needs; the store (``prelabel.store.manager``)
implements it for every backend, ``MemoryBatchState`` in memory for unit tests.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Protocol

from ..store import UsageRow
from ..store.batches import COLLECTED, PLANNED, SUBMITTED, UPLOADED, ChunkRecord, LineFailureRecord, batch_fields
from .reconcile import RemoteBatch


class BatchState(Protocol):
    def batch_chunks(self, job_id: str) -> list[ChunkRecord]: ...
    def batch_plan(self, chunk: ChunkRecord, keys: Iterable[str], max_tokens: int | None,
                   max_cost: float | None) -> tuple[int, float]: ...
    def batch_chunk_keys(self, job_id: str, chunk: str) -> list[str]: ...
    def batch_budget_used(self, job_id: str, now: float) -> tuple[int, float]: ...
    def batch_open_keys(self, job_id: str) -> set[str]: ...
    def batch_open_hashes(self, job_id: str) -> set[int]: ...
    def batch_set_file(self, job_id: str, chunk: str, file_id: str) -> None: ...
    def batch_set_batch(self, job_id: str, chunk: str, batch: RemoteBatch) -> None: ...
    def batch_collect(self, job_id: str, chunk: str, batch: RemoteBatch | None, usage: list[UsageRow],
                      failures: list[tuple[str, str, bool]], now: float) -> bool: ...
    def batch_failures(self, job_id: str) -> dict[str, LineFailureRecord]: ...


class MemoryBatchState:
    """``BatchState`` in memory, with a ledger of its own (``usage``, ``spent``): for unit tests."""

    def __init__(self) -> None:
        self.chunks: dict[tuple[str, str], ChunkRecord] = {}
        self.keys: dict[tuple[str, str], list[str]] = {}
        self.failures: dict[tuple[str, str], LineFailureRecord] = {}
        self.usage: list[UsageRow] = []
        self.spent: dict[str, tuple[int, float]] = {}

    def batch_chunks(self, job_id: str) -> list[ChunkRecord]:
        return sorted((c for (j, _), c in self.chunks.items() if j == job_id), key=lambda c: c.chunk)

    def batch_plan(self, chunk: ChunkRecord, keys, max_tokens, max_cost) -> tuple[int, float]:
        spent_tokens, spent_cost = self.spent.get(chunk.job_id, (0, 0.0))
        open_ = [c for c in self.batch_chunks(chunk.job_id) if c.stage != COLLECTED]
        tokens, cost = chunk.held_tokens, chunk.held_cost
        if max_tokens is not None:
            tokens = max(0, min(tokens, max_tokens - spent_tokens - sum(c.held_tokens for c in open_)))
        if max_cost is not None:
            cost = max(0.0, min(cost, max_cost - spent_cost - sum(c.held_cost for c in open_)))
        self.chunks[(chunk.job_id, chunk.chunk)] = replace(chunk, held_tokens=tokens, held_cost=cost)
        self.keys[(chunk.job_id, chunk.chunk)] = list(keys)
        return tokens, cost

    def batch_chunk_keys(self, job_id: str, chunk: str) -> list[str]:
        return list(self.keys[(job_id, chunk)])

    def batch_budget_used(self, job_id: str, now: float) -> tuple[int, float]:
        tokens, cost = self.spent.get(job_id, (0, 0.0))
        open_ = [c for c in self.batch_chunks(job_id) if c.stage != COLLECTED]
        return tokens + sum(c.held_tokens for c in open_), cost + sum(c.held_cost for c in open_)

    def batch_open_keys(self, job_id: str) -> set[str]:
        return {k for c in self.batch_chunks(job_id) if c.stage != COLLECTED
                for k in self.keys[(job_id, c.chunk)]}

    def batch_open_hashes(self, job_id: str) -> set[int]:
        return {hash(k) for k in self.batch_open_keys(job_id)}

    def batch_set_file(self, job_id: str, chunk: str, file_id: str) -> None:
        c = self.chunks[(job_id, chunk)]
        self.chunks[(job_id, chunk)] = replace(c, file_id=file_id, stage=UPLOADED if c.stage == PLANNED
                                               else c.stage)

    def batch_set_batch(self, job_id: str, chunk: str, batch: RemoteBatch) -> None:
        c = self.chunks[(job_id, chunk)]
        if c.stage == COLLECTED:
            return
        self.chunks[(job_id, chunk)] = replace(c, stage=SUBMITTED, file_id=batch.input_file_id or c.file_id,
                                               **batch_fields(batch))

    def batch_collect(self, job_id, chunk, batch, usage, failures, now) -> bool:
        c = self.chunks[(job_id, chunk)]
        if c.stage == COLLECTED:  # collected by another tick: nothing billed again
            return False
        fields = batch_fields(batch) if batch is not None else {}
        self.chunks[(job_id, chunk)] = replace(c, stage=COLLECTED, held_tokens=0, held_cost=0.0, **fields)
        self.usage.extend(usage)
        tokens, cost = self.spent.get(job_id, (0, 0.0))
        self.spent[job_id] = (tokens + sum(u.prompt_tokens + u.completion_tokens for u in usage),
                              cost + sum(u.cost_usd for u in usage))
        for key, error, retryable in failures:
            was = self.failures.get((job_id, key))
            self.failures[(job_id, key)] = LineFailureRecord(key, (was.attempts if was else 0) + 1, error, retryable)
        return True

    def batch_failures(self, job_id: str) -> dict[str, LineFailureRecord]:
        return {k: f for (j, k), f in self.failures.items() if j == job_id}
