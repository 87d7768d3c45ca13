"""The job loop: leases a job's items, hands them to consumers that run them through the executor,
and group-commits the results with their usage.

A producer leases items from the store in batches; ``max_concurrency`` consumers each take one item at
a time through the live executor (``prelabel.worker.live``: each item's pipeline, its requests under
the budget); finished items are group-committed with their usage. Every answer is written to the
response cache as it arrives (by the executor), so a kill -9 costs only the requests in flight; an
answer its item could not use is taken out of the cache when the item is committed. A budget refusal
stops the leasing, hands unstarted items back, and marks the rest of the job as stopped by budget
(a worker waits instead while other workers hold some of what is left: ``live.LiveExecutor._reserve``).

What a worker holds is bounded by what it can send: the items its share of the rate (the limiter's
pace, set by the coordinator's share) sends in ``lease_work_share`` of a lease, never fewer than keep
the requests it has on the wire going, so that several workers split a job evenly and a dead or
paused one strands few items. Each heartbeat's renew says which leases are still this worker's; an
item not among them was taken over (the worker was paused or cut off past its lease): it is dropped
if not started, and one in progress sends nothing more. Before each request the worker checks the
item's lease by its own clock too, and asks the store at once when no renew has landed for two beats
(a process resumed after SIGSTOP learns what it lost before it sends): at most what was on the wire
is paid twice.

Writes to the store run in a thread of their own (``prelabel.worker.writer``). A store that fails
(full disk, lock held too long) stops the run: no new requests, what can still be committed is,
leases are handed back if the store lets us, and the ``StorageError`` is raised.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from ..config import EngineSettings
from ..config import JobSpec
from ..errors import LeaseLost, StorageError
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

log = logging.getLogger(__name__)


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
                 settings: EngineSettings, owner: str, variants=None, clock=time.time) -> None:
        self.store, self.job, self.spec, self.engine = store, job, spec, engine
        self.variants = variants  # the augmentation stage (prelabel.variants.stage), when the job augments
        self.settings, self.owner = settings, owner
        self.clock = clock  # the wall clock leases are reckoned by (the store compares other workers' to it)
        counter = TokenCounter(spec.model.name)
        self.ctx = JobContext.for_job(spec, task, counter, FewShot.for_job(spec, task, counter), variants)
        self.progress = Progress()
        # The most items held at once (leased, not finished); what the rate allows is less (lease_target).
        self.lease_batch = min(settings.lease_batch, settings.lease_ahead * spec.model.slots)
        self._held: dict[int, tuple[int, float, str, int]] = {}  # seq -> (epoch, expiry by our clock, kind, lease call)
        self._labels_held = 0  # of them, labelling work (augment units are bounded apart)
        self._lost: set[tuple[int, int]] = set()  # (seq, epoch) taken over by another worker
        self._room = asyncio.Event()  # an item finished: the producer may lease again
        self._renewing: asyncio.Future | None = None
        self._renewed_until = math.inf  # this worker's leases and holds lapse then, by its clock, unless renewed
        # Lease calls handed to the store thread (which runs writes in order), and the last renew's
        # answer: (lease calls it came after, what it renewed). An item whose lease came before a
        # renew that did not renew it was lost, even if the lease's answer is taken in after it.
        self._leases_asked = 0
        self._renewal: tuple[int, set[tuple[int, int]]] = (0, set())
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
        self.live.lease_gate = self._holds

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
        queue: asyncio.Queue[LeasedItem | None] = asyncio.Queue()  # bounded by what is held (lease_target)
        self._renewed_until = self.clock() + self.settings.lease_s  # no lease or hold was granted before
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
            target = self.lease_target()
            if self._labels_held > target // 2:  # enough in hand: lease again when half of it is done
                self._room.clear()
                await self._room.wait()
                continue
            # Units too, not only through _produce_units: an empty lease here must mean no work of
            # any kind is left, or units committed since its last poll would be stranded.
            try:
                now, call = self.clock(), self._lease_call()
                items = await self._write(self.store.lease, self.job.id, self.owner, target - self._labels_held, now,
                                          self.settings.lease_s, self._free_units())
            except StorageError as e:
                self._store_failed(e)
                return
            for item in items:
                self._hold(item, now, call)
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

    def lease_target(self) -> int:
        """Items to hold: what this worker's share of the rate sends in ``lease_work_share`` of a
        lease (one request an item), never fewer than keep its requests on the wire going (twice
        those there now), never more than ``lease_batch``. A worker paused or killed with them
        strands that much; a paced worker holding more only makes the others wait for the lease."""
        pace = self.engine.limiter.pace(time.monotonic())  # requests a minute, at this worker's share
        by_rate = pace / 60 * self.settings.lease_s * self.settings.lease_work_share
        busy = min(self.spec.model.slots, 2 * self.live.sending + 1)
        if not math.isfinite(by_rate):
            return self.lease_batch
        return max(1, min(self.lease_batch, max(busy, math.ceil(by_rate))))

    def _lease_call(self) -> int:
        self._leases_asked += 1
        return self._leases_asked

    def _hold(self, item: LeasedItem, leased_at: float, call: int) -> None:
        if (before := self._held.get(item.seq)) is not None and before[2] != AUGMENT:
            self._labels_held -= 1  # leased again (lost and back in the queue) while the old lease's copy runs
        self._held[item.seq] = (item.epoch, leased_at + self.settings.lease_s, item.kind, call)
        if item.kind != AUGMENT:
            self._labels_held += 1
        after, renewed = self._renewal
        if call <= after and (item.seq, item.epoch) not in renewed:  # a renew ran after this lease, without it
            self._lost.add((item.seq, item.epoch))

    def _let_go(self, item: LeasedItem) -> None:
        held = self._held.get(item.seq)
        if held is not None and held[0] == item.epoch:
            del self._held[item.seq]
            if item.kind != AUGMENT:
                self._labels_held -= 1
        self._room.set()

    async def _holds(self, item: LeasedItem) -> None:
        """Raise LeaseLost unless this worker still holds ``item``'s lease. By its own clock first:
        when no renew has landed for two beats (the process was stopped, or the store out of reach),
        it renews now and waits for the answer, which names the leases it lost."""
        if (item.seq, item.epoch) not in self._lost:
            held = self._held.get(item.seq)
            if held is None or held[0] != item.epoch:
                return
            # The item's lease, and this worker's budget holds (a fresh lease after a pause does
            # not make them fresh): a request sent on lapsed holds is given up by the executor.
            if self.clock() < min(held[1], self._renewed_until) - self.settings.heartbeat_s:
                return
            try:
                await self._renew()
            except StorageError as e:
                self._store_failed(e)
                raise LeaseLost("the store could not renew this worker's leases") from e
            if (item.seq, item.epoch) not in self._lost:
                return
        raise LeaseLost(f"item {item.seq}'s lease was taken over by another worker")

    async def _renew(self) -> None:
        """Renew this worker's leases now (one renew at a time: callers meanwhile share it)."""
        if self._renewing is None:
            self._renewing = asyncio.ensure_future(self._renew_once())
            self._renewing.add_done_callback(self._renewed)
        await asyncio.shield(self._renewing)

    def _renewed(self, done: asyncio.Future) -> None:
        self._renewing = None
        if not done.cancelled():
            done.exception()  # retrieved: the callers that awaited it were given it

    async def _renew_once(self) -> None:
        beat, after = self.clock(), self._leases_asked  # the store thread runs the leases asked so far first
        answer = await self._write(self.store.renew, self.owner, beat, self.settings.lease_s)
        self.live.renewed(beat)
        self._renewed_until = beat + self.settings.lease_s
        renewed = {(seq, epoch) for job_id, seq, epoch in answer if job_id == self.job.id}
        self._renewal = (after, renewed)
        lost = 0
        for seq, (epoch, expires, kind, call) in list(self._held.items()):
            if call > after:
                continue  # leased after this renew: not its to judge
            if (seq, epoch) in renewed:
                self._held[seq] = (epoch, max(expires, beat + self.settings.lease_s), kind, call)
            elif (seq, epoch) not in self._lost:  # held, not finished, and not renewed: taken over
                self._lost.add((seq, epoch))
                lost += 1
        if lost:
            log.warning("%d items' leases were taken over by another worker (this one was paused or cut off "
                        "past its lease): dropping them", lost)

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
                now, call = self.clock(), self._lease_call()
                items = await self._write(self.store.lease, self.job.id, self.owner, 0, now,
                                          self.settings.lease_s, free) if free else []
            except StorageError as e:
                self._store_failed(e)
                return
            for item in items:
                self._hold(item, now, call)
                self._open_unit(item)
            if not items:
                await asyncio.sleep(self.settings.commit_interval_s)

    async def _consume(self, queue: asyncio.Queue) -> None:
        while (item := await queue.get()) is not None:
            if self._stopping():
                self._finished(item)
                continue  # left leased; released at the end of the run
            try:
                await self._holds(item)
            except LeaseLost:  # not started, and another worker's now: dropped
                self._finished(item)
                continue
            try:
                result = await self.live.process(item)
            except StorageError as e:  # the item stays leased; released at the end of the run
                self._store_failed(e)
                self._finished(item)
                continue
            self.progress.total += len(result.spawn)  # augmentation adds work as it goes
            self._results.append(result)  # a lost item's too: refused, what it spent is on the ledger as lost
            self._finished(item)
            if result.release and (item.seq, item.epoch) in self._lost:
                pass  # given up because another worker has it, not for the budget
            elif result.release and not self.live.endpoint_down.is_set():
                self.live.budget_hit.set()
            elif not result.release:
                self.progress.finished += 1
            if len(self._results) >= self.settings.commit_every:
                await self._flush()

    def _finished(self, item: LeasedItem) -> None:
        self._let_go(item)
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
                await self._renew()
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
