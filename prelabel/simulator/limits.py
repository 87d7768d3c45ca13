"""Rolling-window rate limits as OpenAI enforces them, and the header formats it reports them in."""
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
        self._prune(now)
        return max(0, math.floor(self.capacity - self.used))

    def reset_in(self, now: float) -> float:
        self._prune(now)
        return self._entries[0][0] + self.span - now if self._entries else 0.0

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0


def duration(seconds: float) -> str:
    """OpenAI's reset format (Go's time.Duration): "120ms", "1s", "1.5s", "6m0s"."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{secs}" if minutes else secs
