"""Rate limits as providers enforce them, and the header formats they report them in.

Each limit admits a cost (1 for requests, the estimate for tokens) or says how long until it fits,
and describes itself in the ``x-ratelimit-*`` headers of its style:

- ``Window`` (OpenAI): a rolling window (1 s for a per-minute limit, as OpenAI enforces 6000 RPM as
  100 in any second); headers per minute: the window's remaining count scaled to a minute, reset =
  until the oldest entry leaves the window (room for one more).
- ``FixedWindow`` (Azure): the count resets on the minute; remaining = what is left of this minute's
  quota, reset = until the next minute.
- ``TokenBucket``: one second of burst, refilled continuously; remaining = the bucket's level scaled
  to a minute, reset = until the bucket is full again.
"""
from __future__ import annotations

import collections
import math


class Window:
    """What one limit admitted in the last ``span`` seconds: a rolling window of (time, cost)."""

    def __init__(self, per_minute: int, span: float) -> None:
        self.per_minute, self.span = per_minute, span
        self.capacity = max(1.0, per_minute * span / 60.0)
        self.used = 0
        self._entries: collections.deque[tuple[float, int]] = collections.deque()

    def _prune(self, now: float) -> None:
        while self._entries and self._entries[0][0] + self.span <= now:
            self.used -= self._entries.popleft()[1]

    def wait_for(self, cost: int, now: float) -> float:
        """Seconds until ``cost`` fits (0: it fits now).

        An empty window admits any cost, so a request bigger than one window is slow, not stuck.
        """
        self._prune(now)
        if not self._entries or self.used + cost <= self.capacity:
            return 0.0
        used = self.used
        for admitted_at, entry_cost in self._entries:
            used -= entry_cost
            if used + cost <= self.capacity:
                return admitted_at + self.span - now
        return self._entries[-1][0] + self.span - now

    def add(self, cost: int, now: float) -> None:
        self._entries.append((now, cost))
        self.used += cost

    def remaining(self, now: float) -> int:
        """What is left, per minute: a 1 s window's count times 60, as OpenAI reports it."""
        self._prune(now)
        return max(0, math.floor(self.capacity - self.used)) * max(1, round(60.0 / self.span))

    def reset_in(self, now: float) -> float:
        self._prune(now)
        return self._entries[0][0] + self.span - now if self._entries else 0.0

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0


class FixedWindow:
    """A per-minute quota that starts again on each minute of the server's clock (Azure OpenAI)."""

    span = 60.0

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.capacity = float(per_minute)
        self.used = 0
        self._minute = None

    def _roll(self, now: float) -> None:
        minute = math.floor(now / self.span)
        if minute != self._minute:
            self._minute, self.used = minute, 0

    def wait_for(self, cost: int, now: float) -> float:
        self._roll(now)
        if self.used == 0 or self.used + cost <= self.capacity:
            return 0.0
        return self.reset_in(now)

    def add(self, cost: int, now: float) -> None:
        self._roll(now)
        self.used += cost

    def remaining(self, now: float) -> int:
        self._roll(now)
        return max(0, math.floor(self.capacity - self.used))

    def reset_in(self, now: float) -> float:
        return (math.floor(now / self.span) + 1) * self.span - now

    def clear(self) -> None:
        self.used, self._minute = 0, None


class TokenBucket:
    """``per_minute / 60`` a second, refilled continuously, holding ``burst_s`` seconds of it."""

    def __init__(self, per_minute: int, burst_s: float = 1.0) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self._scale = max(1, round(60.0 / burst_s))  # the level, reported per minute
        self.level = self.capacity
        self._at: float | None = None

    @property
    def used(self) -> int:  # for the 429's message, like the windows'
        return math.ceil(self.capacity - self.level)

    def _refill(self, now: float) -> None:
        if self._at is not None:
            self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
        self._at = now

    def wait_for(self, cost: int, now: float) -> float:
        self._refill(now)
        need = min(cost, self.capacity)  # a cost above the burst waits for a full bucket, never forever
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def add(self, cost: int, now: float) -> None:
        self._refill(now)
        self.level -= cost  # may go below zero for a cost above the burst: the debt is waited out

    def remaining(self, now: float) -> int:
        self._refill(now)
        return max(0, math.floor(self.level)) * self._scale

    def reset_in(self, now: float) -> float:
        self._refill(now)
        return (self.capacity - self.level) / self.rate

    def clear(self) -> None:
        self.level, self._at = self.capacity, None


def duration(seconds: float) -> str:
    """OpenAI's reset format (Go's time.Duration): "120ms", "1s", "1.5s", "6m0s"."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{secs}" if minutes else secs
