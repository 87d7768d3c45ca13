"""The limiter's and the concurrency limit's decisions, on a hand-driven clock: nothing sleeps."""
from __future__ import annotations

import math
import random

import pytest

from prelabel.llm.concurrency import AdaptiveSlots, VegasLimit
from prelabel.llm.pacing import MIN_CUT, RateLimiter
from prelabel.llm.retry import Failure, decide

RNG = random.Random(0)


def fire(lim: RateLimiter, n: int, now: float, every: float) -> float:
    """``n`` requests started ``every`` seconds apart from ``now``; returns when the last one left."""
    for i in range(n):
        lim.started(now + i * every)
    return now + (n - 1) * every


# --- re-spacing after a pause ----------------------------------------------------------------------

def test_slots_booked_inside_a_pause_are_rebooked_one_by_one_after_it():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)  # one every 10 ms
    slots = [lim.book(1, now=0.0) for _ in range(50)]      # 0.00 .. 0.49
    lim.pause(0.3, now=0.1)                                 # a 429 said: nobody before 0.4
    void = [s for s in slots if not lim.holds(s)]
    assert [s.start for s in void] == pytest.approx([i / 100 for i in range(40)])
    assert all(lim.holds(s) for s in slots if s.start >= 0.4)  # booked after the pause: they stand
    # Each holder wakes at its old start, finds its slot void, and books again: one by one after
    # the pause and after the slots that stood, never released together when it ends.
    starts = sorted(lim.rebook(s, now=max(s.start, 0.1)).start for s in void)
    assert starts[0] >= 0.5 - 1e-9
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) == pytest.approx(0.01)


def test_a_pause_already_covered_changes_nothing():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.pause(1.0, now=0.0)
    slot = lim.book(1, now=0.0)
    lim.pause(0.5, now=0.2)  # ends before the one in force
    assert lim.holds(slot) and slot.start == 1.0


def test_a_slot_booked_now_holds_until_something_happens():
    lim = RateLimiter(rpm=600, tpm=10**9)
    slot = lim.book(1, now=5.0)
    assert slot.start == 5.0 and lim.holds(slot)


# --- a 429 lowers the pace ---------------------------------------------------------------------------

def test_a_429_lowers_the_pace_to_what_the_server_admitted():
    # A gateway: the job says 200/s, no headers say otherwise; the server admits 100 in any second.
    lim = RateLimiter(rpm=12_000, tpm=10**9, headroom=1.0)
    cuts = []
    for i in range(200):
        t = i * 0.005
        lim.started(t)
        if i >= 100:  # the window is full from the 101st: refused, answered at once
            cuts.append(lim.limited(sent_at=t, now=t + 0.001))
    # The first 429 measures what the second before it admitted; the rest came while the server's
    # window still held the old pace's requests, and measured no less: they do not cut again.
    assert cuts == [True] + [False] * 99
    assert lim.pace(1.0) == pytest.approx(100 * 60, rel=0.02)
    # Sent at twice that, the server's window is over-full: nobody until its oldest entry leaves.
    assert lim.paused_until == pytest.approx(1.0 + 0.1)  # (and a little for the server's lag)
    # Past the hold, a 429 cuts by the fixed share at least, whatever it measures.
    before = lim.pace(3.0)
    lim.started(3.0)
    assert lim.limited(sent_at=3.0, now=3.001) and lim.pace(3.001) <= MIN_CUT * before + 1e-6


def test_a_429_voids_the_slots_booked_at_the_old_pace():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    fire(lim, 100, now=-0.99, every=0.01)  # a second at the limit
    slots = [lim.book(1, now=0.0) for _ in range(20)]
    lim.limited(sent_at=0.0, now=0.01)
    assert not any(lim.holds(s) for s in slots)
    spacing = 60.0 / lim.pace(0.01)
    again = [lim.rebook(s, now=0.01) for s in slots]
    assert [b.start - a.start for a, b in zip(again, again[1:])] == pytest.approx([spacing] * 19, rel=0.01)
    assert spacing > 0.01  # the new pace is slower than the one that drew the 429
    assert lim.paused_until == 0.0  # sent at about what the server takes: no pause, only re-spaced


def test_the_pace_recovers_after_a_429_up_to_the_ceiling():
    lim = RateLimiter(rpm=6000, tpm=10**9, recovery=0.01)
    fire(lim, 100, now=0.0, every=0.01)
    lim.limited(sent_at=0.99, now=1.0)
    lowered = lim.pace(1.0)
    assert lowered < 6000
    assert lim.pace(2.0) == pytest.approx(lowered * 1.01)
    assert lim.pace(1000.0) == 6000  # never past the ceiling


def test_a_429_never_cuts_the_pace_by_more_than_half():
    lim = RateLimiter(rpm=6000, tpm=10**9)
    lim.started(0.0)
    for _ in range(10):  # a bad estimate: more refused than sent
        lim.limited(sent_at=0.0, now=0.1)
    assert lim.pace(0.1) == pytest.approx(3000)


# --- header semantics, per style -----------------------------------------------------------------------

def test_openai_headers_a_job_rpm_above_the_servers_is_corrected():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.observe({"x-ratelimit-limit-requests": "3000", "x-ratelimit-remaining-requests": str(49 * 60),
                 "x-ratelimit-reset-requests": "20ms"}, now=0.0)
    assert lim.rpm == 3000 and lim.pace(0.0) == 3000
    # remaining is a rolling second's, scaled to a minute: it caps nothing and pauses nobody
    assert lim.paused_until == 0.0 and lim.book(1, 0.0).start == 0.0 and lim.book(1, 0.0).start == 0.02


def test_openai_headers_remaining_zero_waits_for_the_window_to_free():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "0",
                 "x-ratelimit-reset-requests": "8ms"}, now=2.0)
    assert lim.paused_until == pytest.approx(2.008)
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30ms"}, now=3.0)
    assert lim.paused_until == pytest.approx(3.03)  # no limit beside it: the reset, as said


def test_azure_headers_spread_what_is_left_of_the_minute_until_it_resets():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "600",
                 "x-ratelimit-reset-requests": "30s"}, now=100.0)
    assert lim.pace(100.0) == pytest.approx(1200)  # 600 left over 30 s: 20 a second
    assert lim.pace(130.5) == 6000                 # a new minute: the quota is whole again
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "12s"}, now=148.0)
    assert lim.paused_until == pytest.approx(160.0)  # used up: nobody until the minute starts again


def test_token_bucket_headers_remaining_zero_pauses_for_one_request_not_a_full_bucket():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.observe({"x-ratelimit-limit-requests": "6000", "x-ratelimit-remaining-requests": "0",
                 "x-ratelimit-reset-requests": "400ms"}, now=0.0)  # 400 ms until the bucket is full
    assert lim.paused_until == pytest.approx(0.01)  # one request's worth is back in 10 ms
    lim.observe({"x-ratelimit-remaining-requests": str(30 * 60), "x-ratelimit-reset-requests": "700ms"}, now=0.5)
    assert lim.pace(0.5) == 6000  # a sub-second reset is no minute quota


def test_gateway_without_headers_keeps_the_job_rpm_until_a_429():
    lim = RateLimiter(rpm=12_000, tpm=10**9)
    lim.observe({}, now=0.0)
    assert lim.rpm == 12_000 and lim.pace(0.0) == 12_000 and lim.paused_until == 0.0


# --- the retry policy: a 429 is bounded by time, not attempts -----------------------------------------

def test_a_429_is_retried_whatever_the_attempts_until_the_wait_is_too_long():
    bare = Failure(429, {})
    d = decide(bare, 50, max_retries=3, base=0.5, cap=30, rng=RNG, rate_limited_s=100, max_rate_limit_wait_s=600)
    assert d.retry and d.delay == 0.0 and d.server_wait is None  # the lowered pace spaces it
    d = decide(Failure(429, {"retry-after": "2"}), 50, max_retries=3, base=0.5, cap=30, rng=RNG)
    assert d.retry and d.server_wait == 2.0
    d = decide(bare, 0, max_retries=3, base=0.5, cap=30, rng=RNG, rate_limited_s=601, max_rate_limit_wait_s=600)
    assert not d.retry and d.rate_limit_wait_exceeded and "max_rate_limit_wait_s" in d.reason
    # 5xx stay bounded by the attempts
    assert not decide(Failure(503, {}), 4, max_retries=3, base=0.5, cap=30, rng=RNG).retry


# --- max_concurrency: auto ------------------------------------------------------------------------------

def serve(limit: VegasLimit, capacity: int, base: float, rounds: int) -> None:
    """A server that serves ``capacity`` at once at ``base`` seconds (the rest queue), at full load."""
    for _ in range(rounds):
        n = int(limit.limit)
        rtt = base * max(1.0, n / capacity)
        for _ in range(max(8, n)):
            limit.sample(rtt, n)


@pytest.mark.parametrize("capacity", [8, 16, 48])
def test_auto_settles_just_past_the_servers_capacity(capacity):
    limit = VegasLimit(256)
    serve(limit, capacity, 0.1, rounds=200)
    assert not limit.slow_start
    assert capacity <= limit.limit <= capacity + 2 * 2 * max(1.0, math.log10(limit.limit)) + 1


def test_auto_backs_off_on_503_once_per_change():
    limit = VegasLimit(256, initial=40)
    epoch = limit.epoch
    limit.overloaded(epoch)
    assert limit.limit == 32 and not limit.slow_start
    limit.overloaded(epoch)  # sent before the cut: the cut already answered it
    assert limit.limit == 32


def test_auto_ignores_answers_when_the_limit_was_not_reached():
    limit = VegasLimit(256, initial=64)
    limit.slow_start = False
    for _ in range(100):
        limit.sample(1.0, in_flight=4)  # slow answers, but only 4 in flight: the job has run dry
    assert limit.limit == 64


async def test_adaptive_slots_follow_the_limit():
    limit = VegasLimit(256, initial=2)
    slots = AdaptiveSlots(limit)
    await slots.acquire()
    await slots.acquire()
    assert slots.in_flight == 2
    import asyncio
    third = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    assert not third.done()
    slots.release()
    await asyncio.sleep(0)
    assert third.done() and slots.in_flight == 2


def run_waiters(lim: RateLimiter, waiters: int, latency: float, until: float, on_start) -> list[float]:
    """Requests as the engine sends them: each holder sleeps to its slot, books again if it is void,
    and books its next request when the answer comes back ``latency`` later. Returns the starts."""
    import heapq
    events, starts = [], []
    for i in range(waiters):
        slot = lim.book(1, 0.0)
        heapq.heappush(events, (slot.start, i, slot))
    while events:
        t, i, slot = heapq.heappop(events)
        if t > until:
            break
        if slot is None:  # an answer: book the next request now
            slot = lim.book(1, t)
            heapq.heappush(events, (slot.start, i, slot))
        elif not lim.holds(slot):
            slot = lim.rebook(slot, t)
            heapq.heappush(events, (slot.start, i, slot))
        else:
            lim.started(t, slot)
            starts.append(t)
            on_start(lim, t, len(starts))
            heapq.heappush(events, (t + latency, i, None))
    return starts


@pytest.mark.parametrize("waiters", [32, 256])
def test_a_429_at_any_concurrency_leaves_no_gap_and_no_burst(waiters):
    def at_the_100th(lim, t, n):
        if n == 100:
            lim.limited(sent_at=t, now=t + 0.001)
            lim.pause(0.01, now=t + 0.001)  # and its retry-after-ms

    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=0.99)
    starts = run_waiters(lim, waiters, 0.2, 5.0, at_the_100th)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert max(gaps) < 0.05              # the booked starts went on after the pause, re-spaced...
    assert min(gaps) > 0.0099            # ...one by one, none released together
    in_a_second = max(sum(1 for s in starts if a <= s < a + 1) for a in starts)
    assert in_a_second <= 100


def test_a_lower_limit_in_the_headers_respaces_what_was_booked_at_the_job_rpm():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    lim.started(0.0)
    slots = [lim.book(1, now=0.0) for _ in range(100)]  # 100/s, a second ahead
    lim.observe({"x-ratelimit-limit-requests": "3000"}, now=0.2)
    assert not any(lim.holds(s) for s in slots if s.start > 0.2)
    again = [lim.rebook(s, now=0.2) for s in slots[:3]]
    assert [round(s.start, 3) for s in again] == [0.2, 0.22, 0.24]


def test_max_concurrency_auto_in_the_job_file():
    from pydantic import ValidationError

    from prelabel.config import AUTO_MAX_CONCURRENCY, ModelSpec
    assert ModelSpec(name="m", max_concurrency="auto").slots == AUTO_MAX_CONCURRENCY
    assert ModelSpec(name="m", max_concurrency=12).slots == 12
    for bad in (0, 2000, "many"):
        with pytest.raises(ValidationError):
            ModelSpec(name="m", max_concurrency=bad)


def test_a_429_under_a_reported_limit_is_jitter_a_fixed_cut_and_no_pause():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=0.99)
    lim.observe({"x-ratelimit-limit-requests": "6000"}, now=0.0)
    fire(lim, 50, now=0.0, every=0.01)  # half a second (a stall): the measure would say 50/s
    assert lim.limited(sent_at=0.5, now=0.51)
    assert lim.pace(0.51) == pytest.approx(MIN_CUT * 6000) and lim.paused_until == 0.0
    assert not lim.limited(sent_at=0.6, now=0.61)  # the same jitter, within the hold: once


def test_jitter_429s_under_a_reported_limit_do_not_lower_the_pace_for_good():
    # a busy machine: a 429 every 2.5 s near a known limit. Each cuts the pace, which grows back to
    # just under the ceiling: the pace that drew it was not over the limit (before: each lowered the
    # knee, to 5584 after ten 429s)
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=0.99)
    lim.observe({"x-ratelimit-limit-requests": "6000"}, now=0.0)
    t = 0.0
    for _ in range(10):
        t += 2.5
        assert lim.limited(sent_at=t, now=t + 0.01)
    assert lim.pace(t + 2.49) >= 0.99 * 6000 and lim.pace(t + 30) <= 6000
    assert lim.pace(t + 0.02) < MIN_CUT * 6000 + 1  # still a cut each time


def test_auto_ignores_answers_sent_under_an_older_limit():
    limit = VegasLimit(256, initial=4)
    for _ in range(8):
        limit.sample(0.1, 4, limit.epoch)
    assert limit.limit == 8
    old = limit.epoch - 1
    for _ in range(8):
        limit.sample(0.1, 4, old)  # still the 4 sent before the doubling: not a window of 8's
    assert limit.limit == 8
