"""The budget session's decisions, without an event loop: holds, reservations, settling, slack."""
from __future__ import annotations

import pytest

from prelabel.budget.gate import Reservation
from prelabel.budget.session import SPENT, WAIT, BudgetSession, Hold
from prelabel.config import Price

PRICE = Price(input_per_mtok=1.0, output_per_mtok=2.0)


def test_uncapped_needs_no_hold_and_always_reserves():
    session = BudgetSession(None, None, PRICE, round_requests=8)
    assert session.hold_needed(1000, 64) is None
    assert isinstance(session.reserve(1000, 64), Reservation) and session.in_flight == 1


def test_a_hold_covers_a_round_of_requests_not_just_one():
    session = BudgetSession(10_000, None, PRICE, round_requests=8)
    hold = session.hold_needed(100, 20)
    assert hold == Hold(8 * 120, pytest.approx(8 * (100 * 1.0 + 20 * 2.0) / 1e6))
    session.grant(hold.tokens, hold.cost)
    reservations = [session.reserve(100, 20) for _ in range(8)]
    assert all(isinstance(r, Reservation) for r in reservations)
    assert session.hold_needed(100, 20) is not None  # the ninth needs another slice


def test_a_request_that_does_not_fit_waits_while_others_fly_and_is_refused_once_none_do():
    session = BudgetSession(300, None, PRICE, round_requests=1)
    session.grant(250, 0.0)  # the store granted less than asked: the job's cap is near
    first = session.reserve(100, 100)
    assert isinstance(first, Reservation)
    assert session.reserve(100, 100) == WAIT  # the first may settle below its worst case
    assert session.settle(first, 90, 10) == pytest.approx((90 * 1.0 + 10 * 2.0) / 1e6)
    second = session.reserve(100, 40)  # room freed by settling
    assert isinstance(second, Reservation)
    session.release(second)  # it failed: nothing billed
    assert session.in_flight == 0 and session.reserve(200, 100) == SPENT


def test_the_cost_cap_holds_like_the_token_cap():
    session = BudgetSession(None, 0.001, PRICE, round_requests=4)
    hold = session.hold_needed(100, 50)
    assert hold.tokens == 4 * 150 and hold.cost == pytest.approx(4 * 200 / 1e6)
    session.grant(0, 150 / 1e6)  # less than one request's worst case
    assert session.reserve(100, 50) == SPENT


def test_slack_starts_at_the_guess_then_is_the_most_the_endpoint_billed_beyond_the_estimate():
    session = BudgetSession(None, None, PRICE, round_requests=1, prompt_slack=120)
    assert session.estimate(100) == 220  # before any answer: the schema counted in full
    session.learn_slack(100, 105)
    assert session.estimate(100) == 105  # the first answer replaces the guess
    session.learn_slack(100, 103)
    session.learn_slack(100, 112)
    assert session.prompt_slack == 12  # then the most seen
    session.learn_slack(100, 90)
    assert session.prompt_slack == 12


def test_a_lapsed_grant_is_forfeited_and_asked_again():
    """Holds that lapsed with the lease may be another worker's: what was granted and not used is
    given up, so the next request asks the store again instead of spending it."""
    session = BudgetSession(1000, None, None, round_requests=1)
    session.grant(500, 0.0)
    reservation = session.reserve(100, 100)
    session.settle(reservation, 100, 50)  # 150 spent of the 500 held
    assert session.hold_needed(100, 100) is None  # 350 left: it fits
    session.forfeit()
    assert session.hold_needed(100, 100) is not None  # nothing left of the lapsed grant
    session.forfeit()  # twice changes nothing
    assert session.hold_needed(100, 100).tokens >= 200
