"""A ``model.mode: batch`` job's turn: one tick of the Batch API executor (``executor``) with its provider.

``prelabel.worker.runs.run_job`` calls this instead of the live loop (imported there when a batch job
runs: ``batch`` sits above ``worker``). A tick never waits for a batch: when batches are
still in flight it returns ``waiting`` (the CLI's "waiting on batches" exit), and the next tick (cron's
``work --once``, or ``run --batch`` polling) goes on from the store's record.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import EngineSettings, JobSpec
from ..states import ItemState
from ..store import JobRecord, Store
from .executor import BatchExecutor, TickReport, batch_context
from .provider import BatchProvider

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchTick:
    report: TickReport
    counts: dict[str, int]
    waiting: bool               # batches in flight, or items whose next request was not sent yet
    budget_stopped: bool


def batch_folder(spec: JobSpec, job_id: str) -> Path:
    """Where a job's input and result files are written while its batches are in flight."""
    return Path(spec.output.dir) / ".batches" / job_id


async def tick_job(store: Store, job: JobRecord, spec: JobSpec, task, engine, client, settings: EngineSettings,
                   owner: str, checkpoint: Callable[[str], None] | None = None) -> BatchTick:
    ctx = batch_context(store, job, spec, task)
    provider = BatchProvider(client, job.id)
    executor = BatchExecutor(store, store, job, ctx, engine, provider, batch_folder(spec, job.id), owner,
                             lease_s=settings.lease_s, settings=settings,
                             **({"checkpoint": checkpoint} if checkpoint else {}))
    report = await executor.tick()
    for line in report.partial:
        log.warning("job %s: batch chunk %s; its lines not answered go in a later batch", job.id, line)
    for batch_id in report.orphans:
        log.warning("job %s: batch %s has this job's metadata but no chunk of it: not collected", job.id, batch_id)
    counts = store.counts(job.id)
    left = counts.get(ItemState.PENDING, 0) + counts.get(ItemState.LEASED, 0)
    stopped = False
    if left and report.in_flight == 0 and report.over_budget and not report.submitted:
        store.stop_remaining(job.id)  # nothing in flight will free room: the rest waits for a raised budget
        counts, stopped = store.counts(job.id), True
        left = 0
    return BatchTick(report, counts, bool(left), stopped)
