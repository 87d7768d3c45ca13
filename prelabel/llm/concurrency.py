"""``max_concurrency: auto``: requests in flight set by the latency they get, for self-hosted servers.

A vLLM, Ollama or llama.cpp server has a capacity, not a rate: past the requests it serves at once,
more in flight only queue (latency grows, throughput does not), and past its queue it answers 503.
``VegasLimit`` decides the limit from what each window of answers shows (pure, tested with no clock):
the queue a window implies is ``limit * (1 - rtt_min / rtt)`` (TCP Vegas); under ``alpha`` the limit
grows (doubling until the first sign of a queue, then by one), over ``beta`` it shrinks, a 503
cuts it by ``OVERLOAD_CUT`` and a timeout by ``TIMEOUT_CUT``. ``AdaptiveSlots`` holds requests to the limit.

Vegas keeps a short queue on purpose (``alpha`` to ``beta`` requests), which costs nothing where an
answer takes 0.4 s, but on a one-slot CPU server taking 20 s an answer a queue of three outwaits a
60 s ``timeout_s``; and the server works on to the end of each request given up, so the retry
queues behind it, and the timeouts feed each other until items fail. So with ``max_rtt`` (a share of
the request timeout), an answer slower than that cuts the limit in proportion at once, and the limit
grows only as far as ``max_rtt`` allows, taking latency as proportional to the requests in flight
(true of a server that serves them one by one; a hosted API's answers stay far below ``max_rtt``).
"""
from __future__ import annotations

import asyncio
import collections
import math

OVERLOAD_CUT = 0.8
# A request that outwaited its timeout queued behind far too many (a one-slot llama.cpp server works
# on to the end of a request its client gave up, so each timeout also costs the server a whole answer).
TIMEOUT_CUT = 0.5
AUTO_START = 4     # requests in flight ``auto`` starts from


class VegasLimit:
    def __init__(self, maximum: int, initial: int = AUTO_START, max_rtt: float = math.inf) -> None:
        self.limit = float(initial)
        self.maximum = maximum
        self.max_rtt = max_rtt  # the latency the limit keeps answers under (a share of timeout_s)
        self.rtt_min = math.inf
        self.slow_start = True
        self._window: list[float] = []
        self._epoch = 0  # bumped by every change: a 503 from before it does not cut again

    @property
    def epoch(self) -> int:
        return self._epoch

    def _thresholds(self) -> tuple[float, float]:
        alpha = 2.0 * max(1.0, math.log10(self.limit))
        return alpha, 2.0 * alpha

    def sample(self, rtt: float, in_flight: int, epoch: int | None = None) -> None:
        """An answer that took ``rtt`` seconds, sent with ``in_flight`` requests out (itself included),
        under the limit of ``epoch`` (an answer sent under an older limit says nothing of this one)."""
        if epoch is not None and epoch != self._epoch:
            return
        if rtt > self.max_rtt:
            # Near the timeout: whatever the window will say, fewer in flight now (one cut per limit).
            self.slow_start = False
            self._set(self.limit * self.max_rtt / rtt)
            return
        if in_flight < self.limit / 2 and not self.slow_start:
            return  # the limit was not what held the requests back: this says nothing about it
        self._window.append(rtt)
        if len(self._window) < max(8, int(self.limit)):
            return
        rtt = sorted(self._window)[len(self._window) // 2]  # the window's median: one slow answer is noise
        self._window.clear()
        self.rtt_min = min(self.rtt_min, rtt)
        queue = self.limit * (1.0 - self.rtt_min / rtt)
        alpha, beta = self._thresholds()
        ceiling = max(1.0, self.limit * self.max_rtt / rtt)  # past it, answers would come after max_rtt
        if self.slow_start:
            if queue < alpha and self.limit * 2 <= ceiling:
                self._set(self.limit * 2)
                return
            self.slow_start = False
            # what the server serves, plus a short queue
            self._set(min(self.limit * self.rtt_min / rtt + alpha, max(self.limit, ceiling)))
        elif queue < alpha:
            if self.limit + 1 <= ceiling:
                self._set(self.limit + 1)
        elif queue > beta:
            self._set(self.limit - 1)

    def overloaded(self, epoch: int, cut: float = OVERLOAD_CUT) -> None:
        """A 503 (the server's queue is full), or with ``TIMEOUT_CUT`` a timeout, from a request sent
        under ``epoch``."""
        if epoch != self._epoch:
            return  # sent before the last change: that change already answered it
        self.slow_start = False
        self._set(self.limit * cut)

    def _set(self, limit: float) -> None:
        self.limit = min(float(self.maximum), max(1.0, limit))
        self._window.clear()
        self._epoch += 1


class AdaptiveSlots:
    """At most ``limit.limit`` holders at once; the limit may move while requests wait."""

    def __init__(self, limit: VegasLimit) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiting: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> None:
        while self.in_flight >= int(self.limit.limit):
            future = asyncio.get_running_loop().create_future()
            self._waiting.append(future)
            try:
                await future
            except BaseException:
                if not future.cancelled() and future.done():
                    self._wake()  # woken and cancelled at once: pass the turn on
                raise
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        room = int(self.limit.limit) - self.in_flight
        while room > 0 and self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                room -= 1
