"""``max_concurrency: auto`` against a one-slot server slower than the timeout allows a queue for.

``one_slot`` is such a server as a discrete-event model (no clock, no network): it serves one request
at a time in arrival order, ``service`` seconds each, and works on to the end of a request its client
gave up at ``timeout`` (as llama-cpp-python's server does), so a retry queues behind the abandoned
request. Before ``max_rtt``, Vegas kept its short queue (two to four requests) whatever the latency,
and at 20 s an answer that queue outwaited a 60 s timeout again and again (bench/llamacpp.py,
classify_fewshot on Gemma 3 270M).
"""
from __future__ import annotations

import heapq
import math

from prelabel.llm.concurrency import TIMEOUT_CUT, VegasLimit


def one_slot(limit: VegasLimit, service: float, timeout: float, requests: int) -> list[float]:
    """Send ``requests`` requests (a timed-out one is sent again) through ``limit`` to the server;
    returns when each timeout happened."""
    server_free = 0.0          # when the server finishes what it has taken on
    events: list[tuple[float, int, str, int, float]] = []  # (time, seq, kind, epoch, sent_at)
    seq, in_flight, to_send, done, timeouts, now = 0, 0, requests, 0, [], 0.0

    def send(at: float) -> None:
        nonlocal seq, in_flight, to_send, server_free
        while to_send and in_flight < int(limit.limit):
            to_send -= 1
            in_flight += 1
            server_free = max(server_free, at) + service  # queued behind everything sent, abandoned or not
            kind = "answer" if server_free - at <= timeout else "timeout"
            seq += 1
            heapq.heappush(events, (min(server_free, at + timeout), seq, kind, limit.epoch, at))

    send(now)
    while done < requests:
        now, _, kind, epoch, sent_at = heapq.heappop(events)
        if kind == "answer":
            limit.sample(now - sent_at, in_flight, epoch)
            done += 1
        else:
            timeouts.append(now)
            limit.overloaded(epoch, TIMEOUT_CUT)
            to_send += 1  # the retry
        in_flight -= 1
        send(now)
    return timeouts


def test_without_max_rtt_a_slow_one_slot_server_times_out_all_run_long():
    timeouts = one_slot(VegasLimit(256), service=20.0, timeout=60.0, requests=200)
    assert len(timeouts) > 20 and max(timeouts) > 2000  # the cascade the real server showed, to the end


def test_max_rtt_keeps_a_slow_one_slot_server_under_the_timeout():
    limit = VegasLimit(256, max_rtt=30.0)
    timeouts = one_slot(limit, service=20.0, timeout=60.0, requests=200)
    # Only while the four requests ``auto`` starts with (and the retries queued behind them) drain.
    assert len(timeouts) <= 4 and max(timeouts) < 10 * 20.0 and limit.limit < 2


def test_a_one_slot_server_fast_enough_keeps_a_short_queue():
    limit = VegasLimit(256, max_rtt=30.0)
    assert one_slot(limit, service=2.0, timeout=60.0, requests=300) == []
    assert 2 <= limit.limit <= 15  # requests queue, their answers well inside max_rtt


def test_an_answer_past_max_rtt_cuts_in_proportion_once_per_limit():
    limit = VegasLimit(256, initial=8, max_rtt=30.0)
    epoch = limit.epoch
    limit.sample(60.0, 8, epoch)
    assert limit.limit == 4 and not limit.slow_start
    limit.sample(90.0, 8, epoch)  # sent under the old limit: the cut answered it already
    assert limit.limit == 4


def test_growth_stops_where_answers_would_pass_max_rtt():
    limit = VegasLimit(256, initial=2, max_rtt=30.0)
    limit.slow_start = False
    for _ in range(8):
        limit.sample(25.0, 2, limit.epoch)  # no queue seen (rtt_min is 25), but 3 would take 37.5 s
    assert limit.limit == 2
    for _ in range(8):
        limit.sample(10.0, 2, limit.epoch)
    assert limit.limit == 3


def test_fast_answers_are_not_held_back():
    limit = VegasLimit(256, max_rtt=30.0)
    for _ in range(10):
        for _ in range(max(8, int(limit.limit))):
            limit.sample(0.4, int(limit.limit), limit.epoch)
    assert limit.limit == 256 and math.isinf(VegasLimit(256).max_rtt)
