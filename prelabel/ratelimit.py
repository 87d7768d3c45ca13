"""Pacing requests and tokens under a provider's per-minute limits. Pure: callers pass the clock.

Providers enforce "per minute" limits over much shorter windows (OpenAI: 6000 RPM may be enforced as
100 requests in any second), so bursts are what get 429s. The limiter therefore hands out evenly
spaced start times instead of a bucket that allows bursts: each reservation takes the next free slot
for requests and for tokens, at ``headroom`` of the limit. It learns the real limits from the
``x-ratelimit-*`` headers (a server allowing less than the job file says wins) and stops everyone at
once when the server says to wait, so that one 429 does not become a retry storm.
"""
from __future__ import annotations

import re
from typing import Mapping

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset format ("1s", "120ms", "6m0s", "1.5s") in seconds."""
    if not value:
        return None
    parts = _DURATION.findall(value)
    if not parts:
        try:
            return float(value)
        except ValueError:
            return None
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


class RateLimiter:
    def __init__(self, rpm: int, tpm: int, headroom: float = 0.97) -> None:
        self.configured_rpm, self.configured_tpm = rpm, tpm
        self.rpm, self.tpm = rpm, tpm
        self.headroom = headroom
        self._next_request = 0.0
        self._next_tokens = 0.0
        self.paused_until = 0.0

    def reserve(self, tokens: int, now: float) -> float:
        """Book a start time for a request of ``tokens``; returns how long to wait for it."""
        start = max(now, self._next_request, self._next_tokens, self.paused_until)
        self._next_request = start + 60.0 / (self.rpm * self.headroom)
        self._next_tokens = start + tokens * 60.0 / (self.tpm * self.headroom)
        return start - now

    def refund(self, tokens: int, now: float) -> None:
        """Give back tokens booked but not used (the estimate exceeded the usage)."""
        if tokens > 0:
            self._next_tokens = max(now, self._next_tokens - tokens * 60.0 / (self.tpm * self.headroom))

    def pause(self, seconds: float, now: float) -> None:
        self.paused_until = max(self.paused_until, now + seconds)

    def observe(self, headers: Mapping[str, str], now: float) -> None:
        """Adopt the limits the server reports, and wait out a window it says is used up.

        ``headers`` holds lower-case names (see ``rate_headers``)."""
        limit = _int(headers.get("x-ratelimit-limit-requests"))
        if limit and limit > 0:
            self.rpm = min(self.configured_rpm, limit)
        limit = _int(headers.get("x-ratelimit-limit-tokens"))
        if limit and limit > 0:
            self.tpm = min(self.configured_tpm, limit)
        for kind in ("requests", "tokens"):
            if _int(headers.get(f"x-ratelimit-remaining-{kind}")) == 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.pause(reset, now)


def rate_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The rate-limit and retry headers of a response, lower-cased, in one pass over the raw list.

    (httpx's case-insensitive ``get`` walks every header on each call; a response has twenty.)"""
    picked = {}
    for name, value in raw:
        name = name.lower()
        if name.startswith((b"x-ratelimit-", b"retry-after")):
            picked[name.decode("latin-1")] = value.decode("latin-1")
    return picked
