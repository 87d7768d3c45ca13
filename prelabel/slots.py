"""How many requests an endpoint serves at once, learned from its timeouts.

A self-hosted server often answers one request at a time (llama-cpp-python's server) or a few
(``llama-server``'s slots); the rest wait in its queue. With a job's ``max_concurrency`` of 32,
requests wait longer than their timeout, are sent again while the server still works on the
abandoned ones, and the run ends in an outage (seen for real: 38 timeouts in 59 requests). So the
requests in flight are limited adaptively, as TCP does: the limit starts at ``START`` and grows by
one per answer (doubling every round) until the first timeout; a timeout halves it (never below 1),
and after that each answer raises it by 1/limit (about one more per round), up to
``max_concurrency``. On an endpoint that never times out this is the job's own limit within a few
rounds. (A server works on to the end of a request whose client gave up, so every timeout wastes
its time: starting low matters more than backing off fast.)
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator


START = 8


class AdaptiveSlots:
    def __init__(self, most: int) -> None:
        self.most = most
        self.limit = float(min(most, START))
        self.slow_start = True
        self.in_flight = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < max(1, int(self.limit)))
            self.in_flight += 1
        try:
            yield
        finally:
            async with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    def timed_out(self) -> None:
        self.slow_start = False
        self.limit = max(1.0, self.limit / 2)

    def answered(self) -> None:
        step = 1.0 if self.slow_start else 1.0 / self.limit
        self.limit = min(float(self.most), self.limit + step)
