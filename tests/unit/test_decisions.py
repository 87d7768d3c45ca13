"""Budget, pacing, retry and review decisions: pure values, no clock, no network."""
import math
import random

from prelabel.budget.gate import SKIP, TRUNCATE, BudgetGate, Shortfall, fit_input
from prelabel.config import Price
from prelabel.checks.confidence import span_probability
from prelabel.llm.pacing import RateLimiter, parse_duration
from prelabel.llm.retry import Failure, decide, retry_after
from prelabel.checks.flags import verdict

RNG = random.Random(0)


def test_fit_input():
    assert fit_input(10, 20, None, "truncate").action == "fit"
    assert fit_input(10, 20, 40, "truncate").action == "fit"
    t = fit_input(100, 20, 40, "truncate")
    assert (t.action, t.max_text_tokens) == (TRUNCATE, 20)
    assert fit_input(100, 20, 40, "skip").action == SKIP


def test_gate_spends_only_what_the_store_granted_counting_in_flight():
    gate = BudgetGate(max_tokens=100, max_cost=None, price=None)
    assert gate.shortfall(30, 20) == Shortfall(50, 0.0)   # holds nothing yet: ask the store
    assert gate.reserve(30, 20) is None and gate.in_flight == 0
    gate.grant(100, 0.0)
    first = gate.reserve(30, 20)
    assert first is not None and gate.reserve(30, 20) is not None   # 100 in flight: all of it
    assert gate.shortfall(1, 0) == Shortfall(1, 0.0)
    gate.settle(first, 30, 5)                              # used less than booked: room again
    assert gate.shortfall(10, 0) is None and gate.reserve(10, 0) is not None


def test_gate_without_caps_never_asks():
    gate = BudgetGate(None, None, None)
    assert not gate.capped and gate.shortfall(10**9, 10**9) is None


def test_gate_cost_cap():
    gate = BudgetGate(None, max_cost=0.001, price=Price(input_per_mtok=1.0, output_per_mtok=1.0))
    gate.grant(0, 0.001)
    r = gate.reserve(500, 400)
    assert r is not None and gate.shortfall(200, 0).cost > 0
    assert gate.settle(r, 500, 100) == 0.0006 and gate.shortfall(300, 0) is None
    gate.release(gate.reserve(300, 0))
    assert abs(gate.used_cost - 0.0006) < 1e-12


def test_limiter_paces_evenly_and_adopts_server_limits():
    lim = RateLimiter(rpm=6000, tpm=10**9, headroom=1.0)
    waits = [lim.reserve(10, now=0.0) for _ in range(5)]
    assert [round(w, 4) for w in waits] == [0.0, 0.01, 0.02, 0.03, 0.04]
    lim.observe({"x-ratelimit-limit-requests": "3000"}, now=0.0)
    assert lim.rpm == 3000
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "250ms"}, now=1.0)
    assert lim.paused_until == 1.25 and lim.reserve(1, now=1.0) == 0.25


def test_limiter_never_raises_above_the_job_file():
    lim = RateLimiter(rpm=100, tpm=1000)
    lim.observe({"x-ratelimit-limit-requests": "10000", "x-ratelimit-limit-tokens": "5000000"}, now=0)
    assert (lim.rpm, lim.tpm) == (100, 1000)


def test_token_pacing_and_refund():
    lim = RateLimiter(rpm=10**6, tpm=60_000, headroom=1.0)   # 1000 tokens/s
    assert lim.reserve(500, now=0.0) == 0.0
    assert math.isclose(lim.reserve(500, now=0.0), 0.5)
    lim.refund(500, now=0.0)
    assert math.isclose(lim.reserve(1, now=0.0), 0.5, abs_tol=1e-3)


def test_durations():
    assert parse_duration("1s") == 1.0 and parse_duration("120ms") == 0.12
    assert parse_duration("6m0s") == 360.0 and parse_duration("1.5s") == 1.5 and parse_duration("2") == 2.0


def test_retry_honours_retry_after_and_gives_up():
    d = decide(Failure(429, {"retry-after-ms": "1500"}), 1, max_retries=3, base=0.5, cap=30, rng=RNG)
    assert d.retry and 1.5 <= d.delay <= 1.65 and d.server_wait == 1.5
    d = decide(Failure(503, {}), 2, max_retries=3, base=0.5, cap=30, rng=RNG)
    assert d.retry and 0 <= d.delay <= 1.0
    assert not decide(Failure(503, {}), 4, max_retries=3, base=0.5, cap=30, rng=RNG).retry
    assert not decide(Failure(400, {}), 1, max_retries=3, base=0.5, cap=30, rng=RNG).retry
    assert not decide(Failure(429, {}, "insufficient_quota"), 1, max_retries=3, base=0.5, cap=30, rng=RNG).retry
    assert decide(Failure(None, {}), 1, max_retries=3, base=0.5, cap=30, rng=RNG).retry
    assert retry_after({"retry-after": "2"}) == 2.0


def test_span_probability():
    tokens = [('{"', -0.0), ("label", 0.0), ('":"', 0.0), ("pos", math.log(0.8)), ("itive", math.log(0.9)), ('"}', 0.0)]
    content = '{"label":"positive"}'
    start = content.index("positive")
    assert math.isclose(span_probability(tokens, content, start, start + 8), 0.72)
    assert span_probability(None, content, start, start + 8) is None
    assert span_probability(tokens, content + "x", start, start + 8) is None


def test_verdict_orders_review():
    sure = verdict("positive", 0.95, [], 0.7)
    unsure = verdict("positive", 0.55, [], 0.7)
    none = verdict("positive", None, [], 0.7)
    broken = verdict(None, None, ["invalid_output"], 0.7)
    truncated = verdict("negative", 0.9, ["truncated_input"], 0.7)
    assert not sure.needs_review and unsure.flags == ["low_confidence"] and none.flags == ["no_confidence"]
    assert truncated.needs_review
    order = sorted([sure, unsure, none, broken, truncated], key=lambda v: -v.priority)
    assert order[0] is broken and order[-1] is sure


def test_a_close_call_is_reviewed_before_a_clear_one_of_the_same_confidence():
    close = verdict("positive", 0.8, [], 0.7, margin=0.62)  # runner-up at 0.18
    clear = verdict("positive", 0.8, [], 0.7, margin=0.79)
    unknown = verdict("positive", 0.8, [], 0.7)  # no alternatives: confidence alone
    assert close.priority > clear.priority > unknown.priority - 1e-9
    assert not close.needs_review  # the margin orders the queue; the threshold stays min_confidence
