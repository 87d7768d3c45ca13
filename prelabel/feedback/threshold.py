"""How far the reviewed sample lets us trust the drafts nobody will look at. Pure functions.

Bounds are exact binomial (Clopper-Pearson): never narrower than the data allow, at any sample size.

The auto-accept threshold for ``target`` error: drafts are sorted by confidence, highest first, and a
candidate threshold ``t`` is supported when the one-sided upper bound on the error rate among the
reviewed drafts at or above ``t`` is at most ``target``. The candidates are tested in that fixed
order, from the top, and the scan stops at the first one not supported after one was (a fixed-
sequence test: each step at level ``alpha`` without a multiplicity correction, since every later
claim is only made if all earlier ones held). The threshold is the last supported one. The error of
what it accepts is then at most the stated upper bound with about ``1 - alpha`` confidence, as long
as the reviewed drafts are a uniform sample of the job (an uncertainty-first sample reviews more of
the drafts just above ``t``, which are the worse ones: the bound is then conservative).
tests/unit/test_review_threshold.py checks the coverage over 200 simulated jobs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

ALPHA = 0.05  # one-sided: 95% confidence


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n in the millions is fine)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq, lgn = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(lgn - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
    return min(1.0, total)


def _solve(f, lo: float, hi: float) -> float:
    """The p in [lo, hi] where the decreasing ``f(p) - target`` crosses zero, to ~1e-12."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return hi


def upper_bound(k: int, n: int, alpha: float = ALPHA) -> float:
    """One-sided Clopper-Pearson upper bound: the largest p with P(X <= k) >= alpha."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    return _solve(lambda p: binom_cdf(k, n, p) - alpha, k / n, 1.0)


def lower_bound(k: int, n: int, alpha: float = ALPHA) -> float:
    """One-sided Clopper-Pearson lower bound: the smallest p with P(X >= k) >= alpha."""
    if n <= 0 or k <= 0:
        return 0.0
    return _solve(lambda p: alpha - (1.0 - binom_cdf(k - 1, n, p)), 0.0, k / n)


@dataclass(frozen=True)
class Estimate:
    """An error rate from ``errors`` of ``n`` reviewed drafts, with a two-sided 95% interval."""

    errors: int
    n: int
    rate: float | None
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"errors": self.errors, "n": self.n, "rate": self.rate, "interval_95": [self.low, self.high]}


def estimate(errors: int, n: int) -> Estimate:
    return Estimate(errors, n, errors / n if n else None, lower_bound(errors, n, ALPHA / 2),
                    upper_bound(errors, n, ALPHA / 2))


@dataclass(frozen=True)
class Threshold:
    """Accept drafts with confidence >= ``value``: among the ``n`` reviewed ones there, ``errors``
    were wrong; the error of such drafts is at most ``upper`` (one-sided, 1 - alpha)."""

    value: float
    target: float
    n: int
    errors: int
    upper: float
    alpha: float = ALPHA

    @property
    def rate(self) -> float:
        return self.errors / self.n

    def to_dict(self) -> dict:
        return {"confidence": self.value, "target_error": self.target, "reviewed_at_or_above": self.n,
                "errors_at_or_above": self.errors, "error_estimate": self.rate,
                "error_upper_bound": self.upper, "confidence_level": 1 - self.alpha}


def supported(k: int, n: int, target: float, alpha: float = ALPHA) -> bool:
    """Whether k errors in n rule out an error rate above ``target`` (upper bound <= target)."""
    return n > 0 and binom_cdf(k, n, target) <= alpha


def choose_threshold(confidences: Sequence[float], errors: Sequence[bool], target: float,
                     alpha: float = ALPHA) -> Threshold | None:
    """The lowest confidence at which reviewed drafts support an error of at most ``target``
    (see the module's docstring); None when no threshold is supported by the sample."""
    if len(confidences) != len(errors):
        raise ValueError("one error per confidence")
    if not 0 < target < 1:
        raise ValueError(f"target error must be in (0, 1), got {target}")
    pairs = sorted(zip(confidences, errors), key=lambda pair: -pair[0])
    n = k = 0
    best: tuple[float, int, int] | None = None
    i = 0
    while i < len(pairs):
        value = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == value:  # ties: all in or all out
            n += 1
            k += bool(pairs[i][1])
            i += 1
        if supported(k, n, target, alpha):
            best = (value, n, k)
        elif best is not None:
            break
    if best is None:
        return None
    value, n, k = best
    return Threshold(value=value, target=target, n=n, errors=k, upper=upper_bound(k, n, alpha), alpha=alpha)


def needed_reviews(target: float, alpha: float = ALPHA) -> int:
    """The fewest error-free reviews that can support ``target`` at all: (1 - target)^n <= alpha."""
    return math.ceil(math.log(alpha) / math.log1p(-target))
