"""The job loop: leases a job's items, hands them to consumers that run them through the executor,
and group-commits the results with their usage.

A producer leases items from the store in batches; ``max_concurrency`` consumers each take one item at
a time through the live executor (``prelabel.worker.live``: each item's pipeline, its requests under
the budget); finished items are group-committed with their usage. Every answer is written to the
response cache as it arrives (by the executor), so a kill -9 costs only the requests in flight; an
answer its item could not use is taken out of the cache when the item is committed. A budget refusal
stops the leasing, hands unstarted items back, and marks the rest of the job as stopped by budget.

Writes to the store run in a thread of their own (``prelabel.worker.writer``). A store that fails
(full disk, lock held too long) stops the run: no new requests, what can still be committed is,
leases are handed back if the store lets us, and the ``StorageError`` is raised.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..config import EngineSettings
from ..config import JobSpec
from ..errors import StorageError
from ..states import FINAL_STATES, ItemState
from ..fewshot.selection import FewShot
from ..llm.engine import LLMEngine
from ..llm.stats import RunStats
from ..pipeline.item import JobContext
from ..store import AUGMENT, ItemResult, JobRecord, LeasedItem, Store
from ..tasks import Task
from ..budget.tokens import TokenCounter
from .live import LiveExecutor
from .writer import StoreWriter


@dataclass(slots=True)
class Progress:
    total: int = 0
    finished: int = 0        # items finished by this run
    already: int = 0         # items finished before it started
    tokens: int = 0
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class RunResult:
    job_id: str
    budget_stopped: bool
    stats: RunStats
    counts: dict[str, int]
    outage: str | None = None  # the run stopped because the endpoint kept failing: the last error
    rate_limited: bool = False  # ...because a request waited on the rate limit past model.max_rate_limit_wait_s


class JobRunner:
    def __init__(self, store: Store, job: JobRecord, spec: JobSpec, task: Task, engine: LLMEngine,
                 settings: EngineSettings, owner: str, variants=None) -> None:
        self.store, self.job, self.spec, self.engine = store, job, spec, engine
        self.variants = variants  # the augmentation stage (prelabel.variants.stage), when the job augments
        self.settings, self.owner = settings, owner
        counter = TokenCounter(spec.model.name)
        self.ctx = JobContext.for_job(spec, task, counter, FewShot.for_job(spec, task, counter), variants)
        self.progress = Progress()
        # Lease about two rounds of work at a time: enough to keep every request slot busy, little
        # enough that several workers share a job evenly and a dead one strands few items.
        self.lease_batch = min(settings.lease_batch, settings.lease_ahead * spec.model.slots)
        self._results: list[ItemResult] = []
        self._active = 0  # items handed to consumers and not yet finished
        self._units: asyncio.Queue[LeasedItem | None] = asyncio.Queue()  # augment units waiting
        self._units_open = 0  # augment units leased and not finished
        self._committing = 0  # batches handed to the store thread and not yet committed
        self.writer = StoreWriter()
        # For the shared rate limit (prelabel.worker.sharing): the job's queue came back empty (peers
        # sending under the same key are about to run out too), and this run sends nothing more.
        self.dry, self.sent_all = asyncio.Event(), asyncio.Event()
        self.live = LiveExecutor(store, job, self.ctx, engine, settings, owner, self.writer, self.progress)
        self._write = self.writer.write

    @property
    def storage_error(self) -> StorageError | None:
        return self.writer.error

    def _store_failed(self, error: StorageError) -> None:
        self.writer.failed(error)

    async def run(self) -> RunResult:
        try:
            return await self._run()
        finally:
            self.writer.shutdown()

    async def _run(self) -> RunResult:
        live = self.live
        started_wall, started_mono = time.time(), time.monotonic()
        counts = self.store.counts(self.job.id)
        self.progress.total = sum(counts.values())
        self.progress.already = sum(counts.get(s, 0) for s in FINAL_STATES)
        queue: asyncio.Queue[LeasedItem | None] = asyncio.Queue(maxsize=self.lease_batch)
        workers = [asyncio.create_task(self._consume(queue)) for _ in range(self.spec.model.slots)]
        # Augment units have consumers of their own: they wait on the augmentation process, and must
        # not take the slots labeling needs. (Requests in flight are bounded by the executor.)
        units_at_once = self.settings.augment_slots if self.variants else 0
        workers += [asyncio.create_task(self._consume(self._units)) for _ in range(units_at_once)]
        helpers = [asyncio.create_task(self._commit_loop()), asyncio.create_task(self._heartbeat())]
        if self.variants:
            helpers.append(asyncio.create_task(self._produce_units()))
        try:
            await live.start()
            await self._produce(queue)
            for _ in range(self.spec.model.slots):
                await queue.put(None)
            for _ in range(units_at_once):
                self._units.put_nowait(None)
            await asyncio.gather(*workers)
            self.sent_all.set()
        finally:
            for task in workers + helpers:
                task.cancel()
            live.close()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            self._results.extend(live.interrupted)  # cancelled part-way: back to the queue, what they paid billed
            await self._flush(final=True)
            stats = self.engine.stats       # recorded for an interrupted run too
            stats.wall_s = round(time.monotonic() - started_mono, 3)
            # Unless another process still holds the lock (these would wait as long again, and
            # fail): the leases of a dead process are taken back by the next run on its host.
            if not (self._results and self.storage_error is not None and self.storage_error.locked):
                try:
                    await self._write(self.store.release, self.owner)  # anything unstarted goes back to the queue
                    await self._write(self.store.add_run, self.job.id, self.owner, started_wall, stats)
                    await self._write(self.store.cache_put,  # what was learned of the endpoint, for the next run
                                      [(self.engine.caps_key, self.engine.kept.to_json())])
                except StorageError as e:
                    self._store_failed(e)
        if self.storage_error is not None:
            raise self.storage_error
        if live.endpoint_down.is_set():  # they failed with the endpoint, not alone
            await self._write(self.store.requeue, self.job.id, live.outage.streak)
        elif live.budget_hit.is_set():
            await self._write(self.store.stop_remaining, self.job.id)
        counts = self.store.counts(self.job.id)
        return RunResult(self.job.id, counts.get(ItemState.STOPPED, 0) > 0, stats, counts,
                         live.last_error if live.endpoint_down.is_set() else None, live.rate_limit_stop)

    def _stopping(self) -> bool:
        return self.live.budget_hit.is_set() or self.live.endpoint_down.is_set() or self.storage_error is not None

    async def _produce(self, queue: asyncio.Queue) -> None:
        while not self._stopping():
            # Units too, not only through _produce_units: an empty lease here must mean no work of
            # any kind is left, or units committed since its last poll would be stranded.
            try:
                items = await self._write(self.store.lease, self.job.id, self.owner, self.lease_batch, time.time(),
                                          self.settings.lease_s, self._free_units())
            except StorageError as e:
                self._store_failed(e)
                return
            if not items:
                self.dry.set()
                if self.variants is None or not (self._active or self._results or self._committing):
                    return  # everything finished was committed before this lease: nothing more will come
                # Items in flight may yet spawn work (augmentation): wait for them to be committed.
                await asyncio.sleep(self.settings.commit_interval_s)
                await self._flush()
                continue
            self.live.leased(items)
            for item in items:
                if self._stopping():
                    return
                if item.kind == AUGMENT:
                    self._open_unit(item)
                else:
                    self._active += 1
                    await queue.put(item)

    def _free_units(self) -> int:
        """Augment units to lease: while few are open (two per unit consumer), so that labelling
        never waits for augmentation and one worker does not hoard every unit."""
        return max(0, self.settings.augment_ahead * self.settings.augment_slots - self._units_open) if self.variants else 0

    def _open_unit(self, item: LeasedItem) -> None:
        self._active += 1
        self._units_open += 1
        self._units.put_nowait(item)

    async def _produce_units(self) -> None:
        """Augment units at the pace their consumers take them, not only when labelling leases."""
        while not self._stopping():
            free = self._free_units()
            try:
                items = await self._write(self.store.lease, self.job.id, self.owner, 0, time.time(),
                                          self.settings.lease_s, free) if free else []
            except StorageError as e:
                self._store_failed(e)
                return
            for item in items:
                self._open_unit(item)
            if not items:
                await asyncio.sleep(self.settings.commit_interval_s)

    async def _consume(self, queue: asyncio.Queue) -> None:
        while (item := await queue.get()) is not None:
            if self._stopping():
                self._finished(item)
                continue  # left leased; released at the end of the run
            try:
                result = await self.live.process(item)
            except StorageError as e:  # the item stays leased; released at the end of the run
                self._store_failed(e)
                self._finished(item)
                continue
            self.progress.total += len(result.spawn)  # augmentation adds work as it goes
            self._results.append(result)
            self._finished(item)
            if result.release and not self.live.endpoint_down.is_set():
                self.live.budget_hit.set()
            elif not result.release:
                self.progress.finished += 1
            if len(self._results) >= self.settings.commit_every:
                await self._flush()

    def _finished(self, item: LeasedItem) -> None:
        self._active -= 1
        if item.kind == AUGMENT:
            self._units_open -= 1

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.commit_interval_s)
            await self._flush()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                beat = time.time()
                await self._write(self.store.renew, self.owner, beat, self.settings.lease_s)
                self.live.renewed(beat)
            except StorageError as e:
                self._store_failed(e)
                return

    async def _flush(self, final: bool = False) -> None:
        """Commit the finished results. After a store failure only the final flush tries again (a
        lock may have been let go by then); a batch that cannot be committed is kept for it."""
        self.live.write_answers(final)  # before the results: a commit takes unusable answers out again
        live = self.live
        if not (self._results or live.side_usage) or (self.storage_error is not None and not final):
            return
        batch, self._results = self._results, []
        side, live.side_usage = live.side_usage, []
        self._committing += 1
        try:
            await self._write(self.store.complete, self.job.id, self.owner, batch, side)
        except StorageError as e:
            self._results[:0], live.side_usage[:0] = batch, side
            self._store_failed(e)
        finally:
            self._committing -= 1
