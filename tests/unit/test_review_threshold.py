"""The auto-accept threshold and the binomial bounds: exact values, and a statistical test of the
method with simulated reviewers whose corrections are known."""
from __future__ import annotations

import random

import pytest

from prelabel.feedback.threshold import (binom_cdf, choose_threshold, estimate, lower_bound, needed_reviews,
                                         upper_bound)


def test_binomial_cdf_matches_direct_sums():
    assert binom_cdf(0, 10, 0.1) == pytest.approx(0.9 ** 10)
    assert binom_cdf(2, 5, 0.5) == pytest.approx((1 + 5 + 10) / 32)
    assert binom_cdf(5, 5, 0.3) == 1.0 and binom_cdf(-1, 5, 0.3) == 0.0


def test_clopper_pearson_bounds():
    # Zero errors: the upper bound solves (1 - p)^n = alpha.
    assert upper_bound(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100), abs=1e-9)
    # All wrong: the lower bound solves p^n = alpha.
    assert lower_bound(20, 20, 0.05) == pytest.approx(0.05 ** (1 / 20), abs=1e-9)
    # Known two-sided 95% interval for 5 of 50 (R's binom.test): 0.0333 to 0.2181.
    e = estimate(5, 50)
    assert e.rate == 0.1 and e.low == pytest.approx(0.03327, abs=1e-4) and e.high == pytest.approx(0.21813, abs=1e-4)
    assert estimate(0, 0).rate is None and estimate(0, 0).high == 1.0


def test_threshold_is_the_lowest_supported_confidence():
    # 300 error-free drafts at 0.9-0.99, then 100 at 0.5 with 30 errors.
    conf = [0.9 + 0.0003 * i for i in range(300)] + [0.5] * 100
    err = [False] * 300 + [True] * 30 + [False] * 70
    t = choose_threshold(conf, err, target=0.02)
    assert t.value == 0.9 and t.n == 300 and t.errors == 0
    assert t.upper == pytest.approx(upper_bound(0, 300)) and t.upper <= 0.02


def test_no_threshold_without_enough_reviews():
    assert needed_reviews(0.02) == 149
    assert choose_threshold([0.99] * 148, [False] * 148, 0.02) is None
    assert choose_threshold([0.99] * 149, [False] * 149, 0.02) is not None


def test_ties_are_accepted_or_left_together():
    conf = [0.95] * 200 + [0.8] * 10
    err = [False] * 200 + [True] * 10
    t = choose_threshold(conf, err, 0.02)
    assert t.value == 0.95 and t.n == 200


def _trial(seed: int) -> tuple[bool, bool]:
    """A job of 6,000 drafts whose confidence is overconfident (the true error is about half of
    1 - confidence, to the power 1.3): reviewers check a uniform 1,500 of them and correct exactly
    the wrong ones. Returns (a threshold was found, its stated interval holds the true error of
    the unreviewed drafts it accepts)."""
    rng = random.Random(seed)
    n, reviewed = 6000, 1500
    conf = [round(min(0.999, rng.betavariate(6, 1.0)), 3) for _ in range(n)]
    wrong = [rng.random() < 0.5 * (1 - c) ** 1.3 for c in conf]
    picked = set(rng.sample(range(n), reviewed))
    t = choose_threshold([conf[i] for i in picked], [wrong[i] for i in picked], target=0.02)
    if t is None:
        return False, True  # no claim made, nothing accepted
    accepted = [i for i in range(n) if i not in picked and conf[i] >= t.value]
    true_error = sum(wrong[i] for i in accepted) / len(accepted)
    return True, true_error <= t.upper


def test_threshold_for_target_error_holds_in_95_percent_of_200_seeded_trials():
    results = [_trial(seed) for seed in range(200)]
    found = sum(f for f, _ in results)
    covered = sum(c for _, c in results)
    assert found >= 190, f"only {found} of 200 trials found a threshold: the test would be vacuous"
    assert covered >= 190, f"the stated interval held in {covered} of 200 trials"
