"""How many requests an endpoint serves at once, learned from its timeouts.

A self-hosted server often answers one request at a time (llama-cpp-python's server) or a few
(``llama-server``'s slots); the rest wait in its queue. With a job's ``max_concurrency`` of 32,
requests wait longer than their timeout, are sent again while the server still works on the
abandoned ones, and the run ends in an outage (seen for real: 38 timeouts in 59 requests). So the
requests in flight are limited adaptively: a timeout halves the limit (never below 1), and each
answer raises it by 1/limit (about one more per round of answers), up to ``max_concurrency``. On
an endpoint that never times out this is the job's own limit.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator


class AdaptiveSlots:
    def __init__(self, most: int) -> None:
        self.most = most
        self.limit = float(most)
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
        self.limit = max(1.0, self.limit / 2)

    def answered(self) -> None:
        self.limit = min(float(self.most), self.limit + 1.0 / self.limit)
