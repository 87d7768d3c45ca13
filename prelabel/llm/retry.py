"""The one policy for failed attempts: 429, 5xx, timeouts and dropped connections, a malformed 200,
and a refusal of a capability the request used (``json_schema``, ``n``, ``logprobs``...).

Decisions are values computed from what the failure said (status, headers), so they are tested
without a network or a clock; ``prelabel.llm.engine`` carries them out with tenacity. The SDK's own retries
are set to zero so that nothing else retries underneath this policy. A 429 never fails an item by
count: it is bounded by the time spent waiting on the limit, 5xx and timeouts by the attempts. A
refusal naming a parameter the request sent is a decision to downgrade that capability (the engine
sends the request again without it); a 500 that names one is tried again once first, as any 500,
since a server's error may mention a schema without refusing it.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping

from . import capabilities
from .pacing import parse_duration

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MALFORMED = -200  # Failure.status of a 200 whose body is not the answer asked for
from ..config import MAX_RETRY_AFTER_S, REFUSED_UNANSWERED_ATTEMPTS  # noqa: E402


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed attempt told us, independent of the client library."""

    status: int | None        # None for a timeout or a connection error
    headers: Mapping[str, str]
    code: str | None = None    # OpenAI's error code, e.g. "insufficient_quota"
    message: str = ""          # the error's text: a refusal names the parameter it refuses
    sent: Mapping | None = None  # the request as sent, where the status may be a refusal of one of its parameters
    # The connection was refused and the endpoint has not answered once in this process: a wrong
    # URL or a server not started (a configuration error), not an outage of one that was serving.
    refused_unanswered: bool = False


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay: float
    reason: str
    server_wait: float | None = None  # what retry-after asked, for pausing every request, not just this one
    rate_limit_wait_exceeded: bool = False  # gave up on a 429: waited longer than allowed for the limit
    downgrade: str | None = None  # the capability refused (``capabilities.gap``): send again without it


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms first (precise), then retry-after."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    return parse_duration(headers.get("retry-after"))


def decide(failure: Failure, attempt: int, *, max_retries: int, base: float, cap: float,
           rng: random.Random, rate_limited_s: float = 0.0,
           max_rate_limit_wait_s: float = math.inf) -> RetryDecision:
    """``attempt`` counts the failures other than 429 from 1 (the attempt that just failed).

    A 429 is no failure of the request but the limit's answer: it is retried for as long as the
    request has waited on the limit (``rate_limited_s``, since its first 429) stays within
    ``max_rate_limit_wait_s``, whatever the attempts; 5xx and timeouts are bounded by ``max_retries``.
    """
    if failure.status == MALFORMED:  # the same request would get the same body
        return RetryDecision(False, 0.0, "a malformed answer")
    refused = capabilities.gap(failure.status, failure.message, failure.sent) if failure.sent is not None else None
    if refused is not None and (failure.status != 500 or attempt > min(1, max_retries)):
        return RetryDecision(False, 0.0, f"the endpoint refused {refused} (status {failure.status})",
                             downgrade=refused)
    if failure.status is not None and failure.status not in RETRYABLE_STATUS:
        return RetryDecision(False, 0.0, f"status {failure.status} is not transient")
    if failure.code == "insufficient_quota":
        return RetryDecision(False, 0.0, "quota exhausted: retrying cannot help")
    if failure.refused_unanswered and attempt >= REFUSED_UNANSWERED_ATTEMPTS:
        return RetryDecision(False, 0.0, "connection refused, and the endpoint has not answered once: check "
                             "that the server runs and that its URL (OPENAI_BASE_URL, model.base_url) is right")
    if failure.status == 429:
        if rate_limited_s > max_rate_limit_wait_s:
            return RetryDecision(False, 0.0, f"rate limited for {rate_limited_s:.0f}s, longer than "
                                 f"model.max_rate_limit_wait_s ({max_rate_limit_wait_s:g}s)",
                                 rate_limit_wait_exceeded=True)
        asked = retry_after(failure.headers)
        if asked is None:
            # No hint: the pace the 429 lowered is what spaces the retry (it books a slot like any).
            return RetryDecision(True, 0.0, "status 429: paced", None)
        asked = min(asked, MAX_RETRY_AFTER_S)
        delay = asked + rng.uniform(0, min(0.1 * asked, base))
        return RetryDecision(True, delay, f"status 429: server asked to wait {asked:.3g}s", asked)
    if attempt > max_retries:
        return RetryDecision(False, 0.0, f"gave up after {attempt} attempts")
    # Full jitter spreads retries out; a server's retry-after is a floor, never shortened.
    backoff = rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    asked = retry_after(failure.headers)
    if asked is not None:
        # A little jitter (a tenth of the wait) keeps the retried requests from landing together.
        asked = min(asked, MAX_RETRY_AFTER_S)
        delay = asked + rng.uniform(0, min(0.1 * asked, base))
        reason = f"server asked to wait {asked:.3g}s"
    else:
        delay, reason = backoff, "backoff"
    label = "timeout" if failure.status is None else f"status {failure.status}"
    return RetryDecision(True, delay, f"{label}: {reason}", asked)


class Outage:
    """Items in a row whose requests failed for good: past ``threshold`` the endpoint is down (or the
    key is wrong, or the model gone), and failing every remaining item would help nobody.

    Pure bookkeeping; the worker stops the run and puts the items of the streak back in the queue.
    """

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.streak: list[int] = []  # the items (store seq) that failed since the last success

    def failed(self, seq: int) -> bool:
        """Record a failed item; True when the streak says the endpoint is down."""
        self.streak.append(seq)
        return len(self.streak) >= self.threshold

    def succeeded(self) -> None:
        self.streak.clear()
