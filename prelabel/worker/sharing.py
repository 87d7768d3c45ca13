"""The worker's side of a shared rate limit: beat to the coordinator, pace at the share it gives.

Every ``interval_s`` the keeper beats (in a thread: the coordinator is the store) and sets the
limiter to the share ``prelabel.llm.shares.decide_share`` returns. The loop never waits on the
coordinator itself: a slow or failing beat must not stop the pacing of what is in flight. But once
no beat has landed for ``stale_s - interval_s``, the others may soon count this worker out and take
its share, so it holds its requests (a limiter pause, renewed each step) until a beat lands again;
then it is a newcomer and waits its settle time like one.
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
                 interval_s: float, stale_s: float, settle_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 call: Callable[..., Awaitable[Any]] = asyncio.to_thread) -> None:
        if not interval_s < stale_s or not interval_s < settle_s:
            raise ValueError("a worker must beat more often than it is counted out, and wait longer than a beat")
        self.coordinator, self.limiter, self.worker, self.pace_key = coordinator, limiter, worker, pace_key
        self.job_id = job_id
        self.interval_s, self.stale_s, self.settle_s = interval_s, stale_s, settle_s
        self._clock, self._call = clock, call
        self._confirmed = -math.inf   # when (our clock) the last beat that landed was sent
        self._pending: asyncio.Future | None = None
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
        """One tick: hold the requests if this worker may have been counted out, and beat again."""
        now = self._clock()
        if now - self._confirmed >= self.stale_s - self.interval_s:
            self.limiter.pause(self.interval_s, now)  # renewed each step until a beat lands
        if self._pending is None:
            sent = now
            self._pending = asyncio.ensure_future(self._call(self._beat))
            self._pending.add_done_callback(lambda done: self._landed(done, sent))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.step()

    async def leave(self) -> None:
        """Hand the share back (at the end of the run); a failure only delays it by ``stale_s``."""
        if self._pending is not None:
            self._pending.cancel()
        try:
            await self._call(self.coordinator.leave, self.worker)
        except Exception as e:  # noqa: BLE001 - the others count it out after stale_s all the same
            log.info("could not leave the pace key's workers (they count this one out in %.0f s): %s",
                     self.stale_s, e)

    def _beat(self) -> Roll:
        return self.coordinator.beat(self.worker, self.job_id, self.pace_key, self.limiter.rpm, self.limiter.tpm,
                                     self.stale_s)

    def _landed(self, done: asyncio.Future, sent: float) -> None:
        self._pending = None
        if done.cancelled():
            return
        if (error := done.exception()) is not None:
            log.info("a beat to the coordinator failed (pacing on at the last share): %s", error)
            return
        self._apply(done.result(), sent)

    def _apply(self, roll: Roll, sent: float) -> None:
        decision = decide_share(self.worker, roll.peers, roll.now, self.stale_s, self.settle_s)
        now = self._clock()
        if self.last is None or decision.share != self.last.share:
            log.info("pacing at %.0f%% of the ceiling: %d workers share this endpoint and key",
                     100 * decision.share, decision.live)
        self.limiter.allot(decision.share, now)
        if decision.wait_s > 0:
            self.limiter.pause(decision.wait_s, now)
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
                       stale_s=settings.share_stale_s, settle_s=settings.share_settle_s)


@contextlib.asynccontextmanager
async def shared_pace(keeper: ShareKeeper | None):
    """Keep the limiter at its share for the duration of the block (nothing to do without a keeper)."""
    if keeper is None:
        yield
        return
    await keeper.start()
    task = asyncio.create_task(keeper.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await keeper.leave()
