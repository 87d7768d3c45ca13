"""A ``model.mode: batch`` job's turn: one tick of the Batch API executor (``executor``) with its provider.

``prelabel.worker.runs.run_job`` calls this instead of the live loop (imported there when a batch job
runs: ``batch`` sits above ``worker``). A tick never waits for a batch: when batches are
still in flight it returns ``waiting`` (the CLI's "waiting on batches" exit), and the next tick (cron's
``work --once``, or ``run --batch`` polling) goes on from the store's record.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import BATCH_ITEM_LEASE_S, EngineSettings, JobSpec
from ..errors import BatchTakenOver, StorageError
from ..states import ItemState
from ..store import JobRecord, Store
from ..store.owners import dead_local_owners
from .executor import BatchExecutor, TickReport, batch_context
from .provider import BatchProvider

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchTick:
    report: TickReport
    counts: dict[str, int]
    waiting: bool               # batches in flight, or items whose next request was not sent yet
    budget_stopped: bool
    busy: str | None = None     # another tick holds the job's batches (its owner): this one left them


def batch_folder(spec: JobSpec, job_id: str) -> Path:
    """Where a job's input and result files are written while its batches are in flight."""
    return Path(spec.output.dir) / ".batches" / job_id


class TickBeat:
    """A tick's heartbeat, as the live worker's (``worker.runner``): while a tick runs, its claim on the
    job's batches (``batch_tick_renew``: one tick at a time per job, whose item leases last as long as
    it holds the claim) is renewed every ``heartbeat_s``, and its worker row beats every
    ``share_interval_s`` (``status`` lists it). A tick is mostly synchronous work (replaying items,
    writing 50,000-line files, reading a result file), so the beat is called at each of its store
    calls and download reads (cheap when not due), and by a task while it awaits the provider. ``fence`` renews at once and is called
    before anything is sent to the provider: a tick whose claim was taken over (it was stalled past
    its lease) raises ``BatchTakenOver`` there instead of making a second batch."""

    def __init__(self, store: Store, job_id: str, owner: str, settings: EngineSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.job_id, self.owner, self.settings, self.clock = store, job_id, owner, settings, clock
        self.renewed = self.clock()
        self.worker_beat = -math.inf
        self.beats = 0  # renewals made (tests)

    def claim(self) -> str | None:
        """Take the job's batches for this tick: None when taken, else who holds them (alive). A
        claim taken over (lapsed, or its process found dead) takes its holder's item leases back:
        they are leased again, under a new epoch, so that the old holder's late commits are refused."""
        holder = self.store.batch_tick_holder(self.job_id)
        before = holder[0] if holder and holder[0] != self.owner else None
        dead = before if before and dead_local_owners([before]) else None
        now = self.clock()
        taken = self.store.batch_tick_claim(self.job_id, self.owner, now, self.settings.lease_s, dead)
        self.renewed = now
        if taken is None and before is not None:
            released = self.store.reclaim([before])
            log.info("job %s: took its batches over from %s (%d items back to the queue)", self.job_id, before,
                     released)
        return taken

    def __call__(self) -> None:
        now = self.clock()
        if now - self.renewed >= self.settings.heartbeat_s:
            self._renew(now)
        if now - self.worker_beat >= self.settings.share_interval_s:
            self.worker_beat = now
            with contextlib.suppress(StorageError):  # a beat that cannot land soon is of no use: the next one comes
                self.store.worker_beat(self.owner, self.job_id, f"batch:{self.job_id}", 0.0, 0.0,
                                       self.settings.share_stale_s)

    def fence(self) -> None:
        self._renew(self.clock())

    def _renew(self, now: float) -> None:
        lease_s = self.settings.lease_s
        # The claim alone: a tick's items are leased for as long as a tick can last (BATCH_ITEM_LEASE_S),
        # as renewing a million leases every beat would cost more than the tick's work.
        if not self.store.batch_tick_renew(self.job_id, self.owner, now, lease_s):
            holder = self.store.batch_tick_holder(self.job_id)
            raise BatchTakenOver(f"job {self.job_id}: this tick's claim on its batches lapsed (no heartbeat for "
                                 f"{now - self.renewed:.0f} s, the lease is {lease_s:.0f} s) and "
                                 f"{holder[0] if holder else 'another tick'} took them over; it sends nothing more")
        self.renewed = now
        self.beats += 1

    async def run(self) -> None:
        """Beats while the tick awaits the provider (an upload, a listing)."""
        every = min(self.settings.heartbeat_s, self.settings.share_interval_s)
        while True:
            await asyncio.sleep(every)
            try:
                self()
            except BatchTakenOver:
                return  # the tick is fenced at its next store call or send
            except StorageError as e:  # the tick's own next store call says so
                log.info("a batch tick's heartbeat failed: %s", e)

    def leave(self) -> None:
        with contextlib.suppress(StorageError):
            self.store.batch_tick_release(self.job_id, self.owner)
            self.store.worker_leave(self.owner)


# Not ``release``: the executor's last call, made when a fenced tick unwinds too.
_BEATING = frozenset({"lease", "complete", "cache_put", "batch_plan", "batch_set_file", "batch_set_batch",
                      "batch_collect", "batch_chunks", "batch_chunk_keys", "batch_open_keys", "batch_open_hashes",
                      "batch_failures", "get_job"})


class _BeatingStore:
    """The store as the executor sees it during a tick: each of its calls beats first (``TickBeat``)."""

    def __init__(self, store: Store, beat: TickBeat) -> None:
        self._store, self._beat = store, beat

    def __getattr__(self, name: str):
        attr = getattr(self._store, name)
        if name not in _BEATING:
            return attr
        beat = self._beat

        def call(*args, **kwargs):
            beat()
            return attr(*args, **kwargs)
        return call


async def tick_job(store: Store, job: JobRecord, spec: JobSpec, task, engine, client, settings: EngineSettings,
                   owner: str, checkpoint: Callable[[str], None] | None = None,
                   clock: Callable[[], float] = time.time) -> BatchTick:
    """One tick of a job's batches; one at a time per job across hosts (a tick that finds another
    ticking the job leaves it: ``busy``)."""
    beat = TickBeat(store, job.id, owner, settings, clock)
    holder = beat.claim()
    if holder is not None:
        log.info("job %s: %s is ticking its batches; left to it", job.id, holder)
        return BatchTick(TickReport(), store.counts(job.id), True, False, busy=holder)
    ctx = batch_context(store, job, spec, task)
    provider = BatchProvider(client, job.id, before_send=beat.fence, on_progress=beat)
    beating = _BeatingStore(store, beat)
    executor = BatchExecutor(beating, beating, job, ctx, engine, provider, batch_folder(spec, job.id), owner,
                             lease_s=BATCH_ITEM_LEASE_S, clock=clock, settings=settings, beat=beat,
                             **({"checkpoint": checkpoint} if checkpoint else {}))
    beats = asyncio.ensure_future(beat.run())
    try:
        report = await executor.tick()
    except BatchTakenOver as e:
        log.warning("%s", e)
        holder = store.batch_tick_holder(job.id)
        return BatchTick(TickReport(), store.counts(job.id), True, False, busy=holder[0] if holder else "another tick")
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
        beat.leave()
    for line in report.partial:
        log.warning("job %s: batch chunk %s", job.id, line)  # the CLI says what becomes of its lines
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
