"""Pacing requests and tokens under a provider's per-minute limits. Pure: callers pass the clock.

Providers enforce "per minute" limits over much shorter windows (OpenAI: 6000 RPM may be enforced as
100 requests in any second), so bursts are what get 429s. The limiter therefore books evenly spaced
start times (``book``) instead of a bucket that allows bursts: each booking takes the next free slot
for requests and for tokens, at ``headroom`` of the pace.

What it learns, and how (each a unit-tested decision):

- The ceiling: a lower limit the server reports in ``x-ratelimit-limit-*`` wins over the job file's.
- A pause (a 429's ``retry-after``, or ``remaining`` 0 until the reset) holds everyone, and the
  slots booked inside it are void: their holders book again (``holds``/``rebook``), so they start
  one by one after it, re-spaced, never all at once when it ends.
- A 429 lowers the pace (``limited``). Where the server reports its limit, by a fixed share (the
  429 came from jitter near a known limit, and the pace grows back to the ceiling). Where it does
  not (a gateway), to what the server admitted in the second before the refused request left (the
  starts that were not refused), and never less than that fixed share below the pace that drew it:
  the rate is discovered. Slots booked at the old pace are re-spaced at the new one.
  The pace then recovers by ``recovery`` of itself per second to just under the pace that drew the
  429, and ten times slower past it, up to the ceiling; the next 429 lowers it again: additive
  increase, a decrease measured instead of guessed.
- ``remaining`` 0 pauses until the reset; a reset within a second (a rolling window's, or a token
  bucket's "until full") for at most the time one request's share of the limit takes to come back.
- A minute quota (Azure's ``remaining`` with a ``reset`` beyond a second) caps the pace at what is
  left over the time to the reset. A sub-second window's ``remaining`` (OpenAI's, scaled to a minute)
  says nothing the pacing does not already know, and is only read for 0.
- A share (``allot``): where several workers send under one key, each paces at its share of the
  ceiling (``prelabel.llm.shares``), which changes while it runs. Everything learned scales with it:
  a pace cut to 90% of one share is 90% of the next; the server's limit and its quota stay the whole
  key's, of which this worker takes its share.
"""
from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass
from typing import Mapping

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

ESTIMATE_S = 1.0       # the admitted rate is measured over this much of the recent past
MIN_CUT = 0.97         # a 429 lowers the pace to at most this share of it
MAX_CUT = 0.5          # ...and to at least this share: one bad estimate cannot stall the job
FLOOR = 0.01           # nor 429 after 429 take it below this share of the ceiling (it recovers from there)
HOLD_S = 2.0           # after a cut, the server's window still holds what the old pace sent...
HOLD_BAND = 0.9        # ...so for this long only an admitted rate below this share of the pace cuts again
KNEE = 0.99            # the pace grows back fast to just under the one that drew the last 429...
SLOW = 0.1             # ...and past that this much slower: it probes, it does not run into it again
SKEW_S = 0.1           # the server admits a little after we send (more so in a burst): wait this longer
QUOTA_WINDOW_S = 1.0   # a reset further than this is a quota over minutes (spread what is left)


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


@dataclass(frozen=True, slots=True)
class Slot:
    """A booked start: ``start`` on the caller's clock, under the limiter's ``epoch`` of booking."""

    start: float
    epoch: int
    tokens: int


class RateLimiter:
    def __init__(self, rpm: int, tpm: int, headroom: float = 0.97, recovery: float = 0.02) -> None:
        self.configured_rpm, self.configured_tpm = rpm, tpm
        self.rpm, self.tpm = rpm, tpm  # the ceiling: the job's limits, or the server's when lower
        self.headroom, self.recovery = headroom, recovery
        self._pace = float(rpm)        # requests a minute, lowered by 429s; recovers toward rpm
        self._pace_at = 0.0            # when _pace was last set (it grows from there)
        self._bad = math.inf           # the pace that drew the last cut
        self._next_request = 0.0
        self._next_tokens = 0.0
        self._tokens_fired = 0.0       # where the token line stands counting only what was sent
        self.paused_until = 0.0
        self.epoch = 0                 # bumped when booked slots are void (a pause, a lower pace)
        self._kept_from = 0.0          # ...except those starting at or after this (after a pause)...
        self._floor = 0                # ...and booked at this epoch or later (a lower pace voids all)
        self._quota: tuple[float, float] | None = None  # (requests a minute, until): Azure's rest of a minute
        self._started: collections.deque[float] = collections.deque()   # recent starts
        self._refused: collections.deque[float] = collections.deque()   # starts of recent 429s
        self._cut_at = -math.inf       # when a 429 last lowered the pace
        self._reported = False         # the server states its limit: a 429 is jitter, not a wrong rate
        self.cuts = 0                  # how often (for the run's statistics and tests)
        self.share = 1.0               # of the ceiling, this worker's (others send under the same key)
        self._caps()

    # --- booking ---------------------------------------------------------------------------------

    def pace(self, now: float) -> float:
        """Requests a minute paced now: the last pace plus its recovery, under the ceiling and quota."""
        pace = self._pace * (1.0 + self.recovery * max(0.0, now - self._pace_at))
        knee = max(self._pace, KNEE * self._bad)
        if pace > knee:
            pace = knee + (pace - knee) * SLOW
        pace = min(self._rpm_cap, pace)
        if self._quota is not None:
            if now < self._quota[1]:
                pace = min(pace, self._quota[0] * self.share)  # what is left is the whole key's
            else:
                self._quota = None
        return pace

    def book(self, tokens: int, now: float) -> Slot:
        """The next start time for a request of ``tokens``.

        A holder woken late (a busy event loop) does not push everyone after it back: the line goes on
        from the slot it had, up to one spacing in the past (a burst of at most one request)."""
        spacing = 60.0 / (max(1e-6, self.pace(now)) * self.headroom)
        start = max(self._next_request, self._next_tokens, self.paused_until)
        if start < now - spacing:
            start = now  # idle, or woken later than a spacing: from now
        self._next_request = start + spacing
        self._next_tokens = start + tokens * 60.0 / (self._tpm_cap * self.headroom)
        return Slot(start, self.epoch, tokens)

    def holds(self, slot: Slot) -> bool:
        """Whether a booked slot still stands (else its holder books again)."""
        return slot.epoch == self.epoch or (slot.epoch >= self._floor and slot.start >= self._kept_from)

    def rebook(self, slot: Slot, now: float) -> Slot:
        self.refund(slot.tokens, now)  # the void slot's tokens were never sent
        return self.book(slot.tokens, now)

    def reserve(self, tokens: int, now: float) -> float:
        """Book a start time for a request of ``tokens``; returns how long to wait for it."""
        return max(0.0, self.book(tokens, now).start - now)

    def started(self, now: float, slot: Slot | None = None) -> None:
        """A request leaves now, on ``slot`` (what the admitted rate is measured from)."""
        if slot is not None:
            self._tokens_fired = max(self._tokens_fired, now) + slot.tokens * 60.0 / (self._tpm_cap * self.headroom)
        self._started.append(now)
        self._forget(self._started, now)

    def refund(self, tokens: int, now: float) -> None:
        """Give back tokens booked but not used (the estimate exceeded the usage)."""
        if tokens > 0:
            self._next_tokens = max(now, self._next_tokens - tokens * 60.0 / (self._tpm_cap * self.headroom))

    def allot(self, share: float, now: float) -> None:
        """Pace at ``share`` (0 < share <= 1) of the ceiling from now: others send under this key too.

        The pace scales with the share, so what 429s taught stays in proportion. Either way the slots
        booked at the old share are void, and their holders book again at the new spacing: a smaller
        share must not overrun the others', and a larger one is the leavers' share to use at once (a line
        booked at the old spacing would keep the old pace for as long as it is)."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a share of the ceiling is in (0, 1], not {share}")
        if share == self.share:
            return
        scale, current = share / self.share, self.pace(now)
        self.share = share
        self._caps()
        self._set_pace(current * scale, now)
        self._bad *= scale
        self._respace(now)

    def _caps(self) -> None:
        """This worker's ceiling: its share of the job's limits, or of the server's when lower."""
        self._rpm_cap, self._tpm_cap = self.rpm * self.share, self.tpm * self.share

    # --- what the server says --------------------------------------------------------------------

    def pause(self, seconds: float, now: float) -> None:
        """Nobody starts for ``seconds``; slots booked inside the pause are void (re-spaced after it)."""
        until = now + seconds
        if until <= self.paused_until:
            return
        self.paused_until = until
        self.epoch += 1
        self._kept_from = until
        self._next_request = max(self._next_request, until)
        self._next_tokens = max(self._next_tokens, until)

    def limited(self, sent_at: float, now: float) -> bool:
        """A request started at ``sent_at`` was answered 429: lower the pace it implies.

        Once for the requests sent at one pace: those already under way when the pace was cut drew
        their 429 from the old one. And for ``ESTIMATE_S`` after a cut the server's window still holds
        what the old pace sent (and the server's clock lags ours by a varying skew): 429s then lower the
        pace only to an admitted rate clearly below it, not by the fixed share again (or a burst of
        them would halve it many times). Returns whether it was lowered."""
        self._refused.append(sent_at)
        self._forget(self._refused, now)
        if sent_at < self._cut_at:
            return False
        current = self.pace(now)
        if self._reported:
            # The limit is known: the 429 says the spacing ran too close to it (a busy machine's
            # jitter), not that the rate is wrong. (What this client sent in the last second says
            # little: a stall on either side leaves a hole that the next burst fills.)
            if now - self._cut_at < HOLD_S:
                return False
            # Nor was the pace it drew from above the limit: the knee stays at the ceiling, or each
            # jitter 429 (every few seconds on a busy machine) would lower the pace for good, by the
            # cut's share of what it grew back.
            self._cut(MIN_CUT * current, max(current, self._rpm_cap), now)
            return True
        # The server refused it because its window was full: what it admitted in the second before
        # this request left is its limit (requests still out are counted as admitted: a little over).
        since = sent_at - ESTIMATE_S
        admitted = (sum(1 for t in self._started if since < t <= sent_at)
                    - sum(1 for t in self._refused if since < t <= sent_at))
        measured = admitted * 60.0 / ESTIMATE_S
        if now - self._cut_at < HOLD_S:
            if measured >= HOLD_BAND * current:
                return False
            pace = max(MAX_CUT * current, measured)
        else:
            pace = max(MAX_CUT * current, min(MIN_CUT * current, measured))
        self._cut(pace, current, now)
        if measured < HOLD_BAND * current:
            # Sent well above what the server takes: its window is over-full, and refuses until the
            # oldest of what it admitted in that second leaves it (a rolling window's rule; a bucket
            # loses at most that long once). Sending into it would only draw more 429s.
            oldest = next((t for t in self._started if t > since), sent_at)
            self.pause(min(ESTIMATE_S, oldest + ESTIMATE_S + SKEW_S - now), now)
        return True

    def _cut(self, pace: float, current: float, now: float) -> None:
        self._set_pace(pace, now)
        self._bad = current
        self._cut_at = now
        self.cuts += 1
        self._respace(now)

    def _respace(self, now: float) -> None:
        """Slots booked at the old pace are void: their holders book again, at the new spacing."""
        self.epoch += 1
        self._floor = self.epoch
        last = self._started[-1] if self._started else -math.inf
        self._next_request = max(self.paused_until, last + 60.0 / (self.pace(now) * self.headroom))
        # The token line was pushed by the void slots' starts too: back to what was really sent.
        self._next_tokens = max(self.paused_until, min(self._next_tokens, self._tokens_fired))

    def observe(self, headers: Mapping[str, str], now: float) -> None:
        """Adopt the limits the server reports, and wait out a window it says is used up.

        ``headers`` holds lower-case names (see ``rate_headers``)."""
        limit = _int(headers.get("x-ratelimit-limit-requests"))
        self._reported = self._reported or bool(limit)
        if limit and limit > 0 and min(self.configured_rpm, limit) != self.rpm:
            lower = min(self.configured_rpm, limit) < self.rpm
            self.rpm = min(self.configured_rpm, limit)
            self._caps()
            self._set_pace(min(self._pace, self._rpm_cap), now)
            if lower:  # what was booked at the job's rpm would overrun the server's
                self._respace(now)
        limit = _int(headers.get("x-ratelimit-limit-tokens"))
        if limit and limit > 0:
            self.tpm = min(self.configured_tpm, limit)
            self._caps()
        for kind in ("requests", "tokens"):
            remaining = _int(headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if remaining == 0 and reset:
                limit = _int(headers.get(f"x-ratelimit-limit-{kind}"))
                if kind == "requests" and limit and reset <= QUOTA_WINDOW_S:
                    # A sub-second reset may be a token bucket's "until full": one request's share
                    # of the limit is back sooner than that. (Too soon costs one 429, which says
                    # exactly how long; too late would stall everyone for up to a second.)
                    reset = min(reset, 60.0 / limit)
                self.pause(reset, now)
            elif kind == "requests" and remaining and reset and reset > QUOTA_WINDOW_S:
                # A quota over minutes: what is left, spread over the time until it starts again.
                self._quota = (remaining * 60.0 / reset, now + reset)

    def _set_pace(self, pace: float, now: float) -> None:
        self._pace, self._pace_at = max(FLOOR * self._rpm_cap, pace), now

    @staticmethod
    def _forget(times: collections.deque[float], now: float) -> None:
        while times and times[0] <= now - 2 * ESTIMATE_S:  # a 429 may come back a while after it left
            times.popleft()


def rate_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The rate-limit and retry headers of a response, lower-cased, in one pass over the raw list.

    (httpx's case-insensitive ``get`` walks every header on each call; a response has twenty.)"""
    picked = {}
    for name, value in raw:
        name = name.lower()
        if name.startswith((b"x-ratelimit-", b"retry-after")):
            picked[name.decode("latin-1")] = value.decode("latin-1")
    return picked
