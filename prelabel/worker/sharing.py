"""The worker's side of a shared rate limit: beat to the coordinator, pace at the share it gives.

Every ``interval_s`` the keeper beats (in a thread: the coordinator is the store) and sets the
limiter to the share ``prelabel.llm.shares.decide_share`` returns. The loop never waits on the
coordinator itself: a slow or failing beat must not stop the pacing of what is in flight. But once
no beat has landed for ``stale_s - interval_s``, the others may soon count this worker out and take
its share, so it holds its requests (a limiter pause, renewed each step) until a beat lands again;
then it is a newcomer and waits like one.

It beats every ``recheck_s`` instead while it or a peer waits to be counted (a newcomer: it starts
as soon as the last peer has made room, and the peers make room within ``recheck_s``), and once its
job's queue has run dry (``hurry``: its peers are about to leave, and their shares are worth taking
at once). A run that will send nothing more leaves at once (``leave``), not when its last results
are committed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any, Awaitable, Callable

from ..config import EngineSettings as Engine, JobSpec
from ..errors import StoreError
from ..llm.endpoint import Endpoint
from ..llm.pacing import RateLimiter
from ..llm.shares import Share, decide_share, pace_key
from .coordinator import Coordinator, Roll

log = logging.getLogger(__name__)


class ShareKeeper:
    def __init__(self, coordinator: Coordinator, limiter: RateLimiter, worker: str, job_id: str, pace_key: str, *,
                 interval_s: float, stale_s: float, recheck_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 call: Callable[..., Awaitable[Any]] = asyncio.to_thread) -> None:
        if not interval_s < stale_s or not 0 < recheck_s <= interval_s:
            raise ValueError("a worker must beat more often than it is counted out, and recheck within a beat")
        self.coordinator, self.limiter, self.worker, self.pace_key = coordinator, limiter, worker, pace_key
        self.job_id = job_id
        self.interval_s, self.stale_s, self.recheck_s = interval_s, stale_s, recheck_s
        self._clock, self._call = clock, call
        self._confirmed = -math.inf   # when (our clock) the last beat that landed was sent
        self._pending: asyncio.Future | None = None
        self._counted = False         # every live peer has counted this worker (it may send)
        self._hurried = False         # the job's queue ran dry: peers are about to leave
        self._left = False
        self._leaving: asyncio.Future | None = None
        self._wake = asyncio.Event()
        self._seen_held: set[str] = set()  # peers whose life lock a roll showed held (a free one: gone)
        self._life = False            # this worker's own life lock was held at its last beat
        self.beat_s: list[float] = []  # how long each beat took to land (the run's log says how they went)
        self.last: Share | None = None  # the last decision (for tests and the run's statistics)

    async def start(self) -> None:
        """The first beat, awaited: nothing is sent before this worker knows its share. A beat that
        fails (the store busy for longer than a beat waits) is tried again every interval, up to
        ``stale_s`` worth of tries, before the run fails with it."""
        tries = max(1, math.ceil(self.stale_s / self.interval_s))
        for attempt in range(tries):
            sent = self._clock()
            try:
                roll = await self._call(self._beat)
            except StoreError as e:
                if attempt == tries - 1:
                    raise
                log.info("the first beat to the coordinator failed (trying again in %.1f s): %s", self.interval_s, e)
                await asyncio.sleep(self.interval_s)
                continue
            self._apply(roll, sent)
            return

    def step(self) -> None:
        """One tick: hold the requests if this worker may have been counted out or is not counted
        yet, and beat again."""
        now = self._clock()
        if now - self._confirmed >= self.stale_s - self.interval_s:
            self.limiter.pause(self.interval_s, now)  # renewed each step until a beat lands
        if not self._counted:
            self._hold(now)
        if self._pending is None and not self._left:
            sent = now
            self._pending = asyncio.ensure_future(self._call(self._beat))
            self._pending.add_done_callback(lambda done: self._landed(done, sent))

    @property
    def next_in(self) -> float:
        """How long until the next beat."""
        settling = self.last is not None and self.last.settling
        return self.recheck_s if self._hurried or not self._counted or settling else self.interval_s

    def hurry(self) -> None:
        """The job's queue ran dry: beat every ``recheck_s`` from now (peers leave any moment)."""
        self._hurried = True
        self._wake.set()

    async def run(self) -> None:
        while not self._left:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.next_in)
            self._wake.clear()
            self.step()

    async def leave(self) -> None:
        """Hand the share back (this run sends nothing more); a failure only delays it by ``stale_s``.
        Once: a second call waits for the first (a caller cancelled meanwhile does not cancel it)."""
        self._left = True
        self._wake.set()
        if self._leaving is None:
            self._leaving = asyncio.ensure_future(self._leave())
        await asyncio.shield(self._leaving)

    async def _leave(self) -> None:
        if self._pending is not None:  # a beat in flight lands first: after the leave, it would list us again
            await asyncio.wait([self._pending])
        if self.beat_s:
            took = sorted(self.beat_s)
            log.info("%d beats to the coordinator: median %.0f ms, 99th percentile %.0f ms, slowest %.0f ms",
                     len(took), 1000 * took[len(took) // 2], 1000 * took[int(0.99 * (len(took) - 1))],
                     1000 * took[-1])
        try:
            await self._call(self.coordinator.leave, self.worker)
        except Exception as e:  # noqa: BLE001 - the others count it out after stale_s all the same
            log.info("could not leave the pace key's workers (they count this one out in %.0f s): %s",
                     self.stale_s, e)

    def _hold(self, now: float) -> None:
        # Until the step after next: renewed at each recheck while this worker is not counted.
        self.limiter.pause(1.5 * self.recheck_s, now)

    def _beat(self) -> Roll:
        return self.coordinator.beat(self.worker, self.job_id, self.pace_key, self.limiter.rpm, self.limiter.tpm,
                                     self.stale_s)

    def _landed(self, done: asyncio.Future, sent: float) -> None:
        self._pending = None
        if done.cancelled():
            return
        self.beat_s.append(self._clock() - sent)
        if (error := done.exception()) is not None:  # retrieved even after leaving: asyncio would print it
            if self._life and not self._left:
                # Its life lock may have gone with its connection, and its peers count it out by that
                # at once: it holds until a beat lands (and then may be a newcomer).
                log.info("a beat to the coordinator failed (holding until one lands): %s", error)
                self._confirmed = -math.inf
                self.limiter.pause(self.interval_s, self._clock())
                return
            log.info("a beat to the coordinator failed (pacing on at the last share): %s", error)
            return
        if not self._left:
            self._apply(done.result(), sent)

    def _apply(self, roll: Roll, sent: float) -> None:
        listed = {p.worker for p in roll.peers}
        self._seen_held = {w for w in self._seen_held if w in listed} | {p.worker for p in roll.peers if p.held}
        self._life = self.worker in self._seen_held
        decision = decide_share(self.worker, roll.peers, roll.now, self.stale_s, self.recheck_s, self._seen_held)
        now = self._clock()
        if self.last is None or decision.share != self.last.share:
            log.info("pacing at %.0f%% of the ceiling: %d workers share this endpoint and key",
                     100 * decision.share, decision.live)
        self.limiter.allot(decision.share, now)
        self._counted = decision.wait_s == 0
        if not self._counted:
            self._hold(now)
        self._confirmed = sent
        self.last = decision


def keeper_for(coordinator: Coordinator | None, limiter: RateLimiter, worker: str, job_id: str, spec: JobSpec,
               endpoint: Endpoint, settings: Engine) -> ShareKeeper | None:
    """The keeper of a job's run: its limit is shared with the workers of the same endpoint, model
    (Azure: deployment) and key."""
    if coordinator is None:
        return None
    model = spec.model
    key = pace_key(coordinator.secret(), model.provider, endpoint.url_for(spec),
                   model.deployment or model.name if model.provider == "azure" else model.name, endpoint.api_key)
    return ShareKeeper(coordinator, limiter, worker, job_id, key, interval_s=settings.share_interval_s,
                       stale_s=settings.share_stale_s, recheck_s=settings.share_recheck_s)


@contextlib.asynccontextmanager
async def shared_pace(keeper: ShareKeeper | None, dry: asyncio.Event | None = None,
                      sent_all: asyncio.Event | None = None):
    """Keep the limiter at its share for the duration of the block (nothing to do without a keeper).
    Once ``dry`` is set (the job's queue ran dry) the keeper hurries; once ``sent_all`` is (the run
    sends nothing more) it leaves, while the block still commits."""
    if keeper is None:
        yield
        return
    await keeper.start()
    tasks = [asyncio.create_task(keeper.run())]
    if dry is not None:
        tasks.append(asyncio.create_task(_when(dry, keeper.hurry)))
    if sent_all is not None:
        tasks.append(asyncio.create_task(_when(sent_all, keeper.leave)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await keeper.leave()


async def _when(event: asyncio.Event, then: Callable[[], Any]) -> None:
    await event.wait()
    if asyncio.iscoroutine(done := then()):
        await done
